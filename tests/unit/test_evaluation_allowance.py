"""Red-team F4: evaluation is no unlimited oracle. A site evaluates each round of an
approved study on one model only, never a round past the final one, and draws the final
bootstrap and saliency maps once per study; the record is a real file that survives a
node restart (a new object over the same folder)."""

from __future__ import annotations

import multiprocessing
from pathlib import Path

import pytest

from consortia.client.privacy.evaluation_allowance import (
    EvaluationAllowance,
    EvaluationRefusedError,
)

STUDY = "ab" * 32
W0, W1, W2 = ("0" * 64, "1" * 64, "2" * 64)


def test_each_round_once_on_one_model_and_never_past_the_final(tmp_path: Path) -> None:
    allowance = EvaluationAllowance(tmp_path, STUDY)
    assert not allowance.grant(0, 3, W0).extras
    assert not allowance.grant(0, 3, W0).extras  # the same model again: a resend, answered
    with pytest.raises(EvaluationRefusedError, match="already evaluated on another model"):
        allowance.grant(0, 3, W1)  # a chosen model under a used round number
    with pytest.raises(EvaluationRefusedError, match="has 3 rounds"):
        allowance.grant(5, 3, W1)  # a round number past the final evaluation
    with pytest.raises(EvaluationRefusedError, match="has 3 rounds"):
        allowance.grant(-1, 3, W1)


def test_the_final_extras_are_drawn_once_per_study_across_restarts(tmp_path: Path) -> None:
    assert EvaluationAllowance(tmp_path, STUDY).grant(4, 3, W2).extras
    restarted = EvaluationAllowance(tmp_path, STUDY)  # the node restarted
    assert not restarted.grant(4, 3, W2).extras  # metrics again, no second bootstrap
    with pytest.raises(EvaluationRefusedError):
        restarted.grant(4, 3, W1)
    other_study = EvaluationAllowance(tmp_path, "cd" * 32)  # another approved study
    assert other_study.grant(4, 3, W1).extras


def test_a_damaged_record_refuses_instead_of_starting_afresh(tmp_path: Path) -> None:
    allowance = EvaluationAllowance(tmp_path, STUDY)
    allowance.grant(1, 3, W1)
    allowance.path.write_text("{not json")
    with pytest.raises(EvaluationRefusedError, match="unreadable"):
        allowance.grant(2, 3, W2)
    allowance.path.write_text('{"format": "something else"}')
    with pytest.raises(EvaluationRefusedError, match="not an evaluation record"):
        allowance.grant(2, 3, W2)


def _grant(args: tuple[str, str]) -> bool:
    folder, model = args
    try:
        EvaluationAllowance(Path(folder), STUDY).grant(1, 3, model)
    except EvaluationRefusedError:
        return False
    return True


def test_two_processes_racing_for_one_round_get_one_model_in(tmp_path: Path) -> None:
    with multiprocessing.get_context("spawn").Pool(2) as pool:
        granted = pool.map(_grant, [(str(tmp_path), W1), (str(tmp_path), W2)])
    assert sorted(granted) == [False, True]
