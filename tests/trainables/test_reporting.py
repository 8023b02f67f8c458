"""Short epochs travel together to the scheduler; every epoch still arrives, in order, with its own timing."""

from __future__ import annotations

from trainables.reporting import EARLIER_EPOCHS, EpochBatcher, expand_epochs


class Clock:
    """Seconds advanced by hand: these tests are about which report carries which epoch, not about speed."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def feed(batcher: EpochBatcher, clock: Clock, epochs: int, epoch_s: float, checkpoint_at=(), last=None) -> None:
    for epoch in range(1, epochs + 1):
        clock.now += epoch_s
        batcher({"epoch": epoch, "val_loss": 1.0 / epoch, "finished": epoch == last},
                "snapshot" if epoch in checkpoint_at else None)


def test_short_epochs_are_merged_and_none_is_lost():
    sent, clock = [], Clock()
    batcher = EpochBatcher(lambda m, s: sent.append((m, s)), interval_s=1.0, clock=clock)
    feed(batcher, clock, 30, 0.1, checkpoint_at={15, 30}, last=30)
    epochs = [e["epoch"] for report, _ in sent for e in expand_epochs(report)]
    assert epochs == list(range(1, 31))
    assert len(sent) < 6  # ~every 1 s plus the checkpoints, instead of 30
    assert [m["epoch"] for m, s in sent if s == "snapshot"] == [15, 30]
    assert all(EARLIER_EPOCHS not in e for report, _ in sent for e in report.get(EARLIER_EPOCHS, []))
    assert all(abs(e["epoch_time_s"] - 0.1) < 1e-9 for report, _ in sent for e in expand_epochs(report))


def test_decision_epochs_divergence_and_long_epochs_are_sent_at_once():
    sent, clock = [], Clock()
    batcher = EpochBatcher(lambda m, s: sent.append(m), interval_s=1.0, decision_epochs=frozenset({4, 12}), clock=clock)
    feed(batcher, clock, 12, 0.01)
    assert [m["epoch"] for m in sent] == [4, 12]  # ASHA sees exactly its rung epochs
    clock.now += 0.01
    batcher({"epoch": 13, "diverged": "loss became nan at epoch 13"})
    assert sent[-1]["epoch"] == 13
    clock.now += 0.01
    batcher({"epoch": 14, "stopped_no_improvement": "no improvement of val_loss in 3 epochs"})  # patience ran out
    assert sent[-1]["epoch"] == 14
    slow_sent = []
    slow = EpochBatcher(lambda m, s: slow_sent.append(m), interval_s=1.0, clock=clock)
    feed(slow, clock, 5, 2.0)
    assert [m["epoch"] for m in slow_sent] == [1, 2, 3, 4, 5]  # epochs longer than the interval: one report each
    assert all(EARLIER_EPOCHS not in m for m in slow_sent)


def test_interval_zero_sends_every_epoch():
    sent, clock = [], Clock()
    batcher = EpochBatcher(lambda m, s: sent.append(m), interval_s=0.0, clock=clock)
    feed(batcher, clock, 5, 0.0)
    assert [m["epoch"] for m in sent] == [1, 2, 3, 4, 5]
