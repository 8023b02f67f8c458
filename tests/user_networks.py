"""Networks users write, as the tests hand them to hps."""

# The course notes' first PyTorch program, exactly as printed there (its hidden sizes are module-level names).
COURSE_NOTES_MLP = '''
import torch
import torch.nn.functional as F

num_hidden_1 = 64
num_hidden_2 = 32


class MultilayerPerceptron(torch.nn.Module):
    def __init__(self, num_features, num_classes):
        super(MultilayerPerceptron, self).__init__()
        # First hidden layer
        self.linear_1 = torch.nn.Linear(num_features,
                                        num_hidden_1)
        # Second hidden layer
        self.linear_2 = torch.nn.Linear(num_hidden_1,
                                        num_hidden_2)
        # Output layer
        self.linear_out = torch.nn.Linear(num_hidden_2,
                                         num_classes)

    def forward(self, x):
        out = self.linear_1(x)
        out = F.relu(out)
        out = self.linear_2(out)
        out = F.relu(out)
        logits = self.linear_out(out)
        probas = F.log_softmax(logits, dim=1)
        return logits, probas
'''
