from edgeda.tracking import BestState


def test_best_state_keeps_the_highest_and_snapshots_only_when_kept():
    calls = []
    b = BestState()
    assert b.empty and b.as_dict() is None
    for score, tag in ((0.2, 1), (0.5, 2), (0.4, 3), (0.5, 4)):
        b.offer(score, tag, lambda t=tag: calls.append(t) or {"w": t})
    assert (b.score, b.tag, b.state) == (0.5, 4, {"w": 4}) and calls == [1, 2, 4]  # a later state wins a tie
    assert not b.offer(0.5, 5, dict, ties=False) and b.tag == 4  # unless ties are kept by the earlier one
    again = BestState.from_dict(b.as_dict())
    assert (again.score, again.tag, again.state) == (b.score, b.tag, b.state)
