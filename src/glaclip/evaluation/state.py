"""Resuming an evaluation: one state file per rank in ``OUT/eval_state/``.

Every finished image appends one JSON line ``{"id", "counts", "inputs"}`` (its own metric
counters, ``SegMetric.to_tensor``, and a digest of its image and label files,
``input_fingerprint``) to ``OUT/eval_state/rank<r>.jsonl``, flushed and fsynced after its
prediction file is in place. Each state file starts with a header holding a fingerprint of the
evaluation (dataset, data root, class lines, label conventions, every setting except
``window_batch`` and ``block_size``, which only partition the work, and ``allow_slow``; and
the model identities). A later run with the same fingerprint reads every state file, skips the
ids listed there whose image and label files are still the ones evaluated, and adds their
counters: integer sums, so the result is the one a fresh run gives. An image whose image or
label file changed since (a label map fixed or replaced) is evaluated again, with a warning
naming it; its new record replaces the old one (the last record of an id counts).
``--limit`` is not part of the fingerprint (an image's counters do not depend on it, so a run
over the first N images can be continued by a run over all of them); instead, a run with
``--limit N`` writes ``results_limitN.json``/``.md`` and a run over the whole dataset
``results.json``/``.md`` (``reports.results_stem``), so that runs over different numbers of
images never replace each other's results. A torn last line (a crash mid-write) is ignored and
cut off; a different fingerprint is refused unless ``--restart`` discards the state
(``--restart`` deletes no result file). Resume works with any world size; with several nodes,
``OUT`` must be a folder every node sees (checked: the ranks must agree).
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from glaclip.atomic import write_error
from glaclip.data.datasets import Sample
from glaclip.evaluation.metrics import SegMetric
from glaclip.evaluation.tasks import EvalTask, check_output_folder
from glaclip.model.distributed import DistInfo, all_reduce_sum, barrier

STATE_DIR = "eval_state"
STATE_VERSION = 3  # 3: the image records hold the digest of their files ("inputs")
_READ_CHUNK = 1 << 20  # bytes hashed at a time
_SHOWN = 3  # changed images named in the warning
# settings that only decide how the work is partitioned (or whether it may run), not what is
# computed
_RUNTIME_ONLY = ("window_batch", "block_size", "allow_slow")


def fingerprint(config: dict[str, Any]) -> str:
    """A short hash of a JSON-ready evaluation description."""
    text = json.dumps(config, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def _differences(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
    keys = sorted(set(old) | set(new))
    out: list[str] = []
    for key in keys:
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += _differences(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key}")
    return out


def input_fingerprint(sample: Sample) -> str:
    """A digest (BLAKE2b, 24 hex digits) of the bytes of a sample's image and label files:
    what its recorded counters were computed from."""
    h = hashlib.blake2b(digest_size=12)
    for path in (sample.image, sample.label):
        with open(path, "rb") as f:
            while chunk := f.read(_READ_CHUNK):
                h.update(chunk)
        h.update(b"\0")
    return h.hexdigest()


def read_state(state_dir: Path, config: dict[str, Any], counts_len: int) -> dict[str, list[int]]:
    """Finished images recorded in ``state_dir/rank*.jsonl``: ``{id: counts}``
    (``read_records`` without the digests)."""
    return {k: counts for k, (counts, _) in read_records(state_dir, config, counts_len).items()}


def read_records(
    state_dir: Path, config: dict[str, Any], counts_len: int
) -> dict[str, tuple[list[int], str | None]]:
    """Finished images recorded in ``state_dir/rank*.jsonl``: ``{id: (counts, digest of
    its files)}``; an id recorded twice (evaluated again after its files changed): its last
    record.

    A last line without its newline (a write cut short) is ignored.

    Raises:
        ValueError: a file records another evaluation (names what differs) or is damaged.
    """
    done: dict[str, tuple[list[int], str | None]] = {}
    if not state_dir.is_dir():
        return done
    want = fingerprint(config)
    for path in sorted(state_dir.glob("rank*.jsonl")):
        lines = path.read_bytes().split(b"\n")[:-1]  # the part after the last newline is torn
        for number, raw in enumerate(lines, start=1):
            try:
                record = json.loads(raw)
            except ValueError:
                raise ValueError(
                    f"evaluation state {path} is damaged at line {number}: pass --restart to "
                    "start over"
                ) from None
            if number == 1:
                _check_header(record, path, state_dir, config, want)
                continue
            counts = record.get("counts") if isinstance(record, dict) else None
            if not isinstance(counts, list) or len(counts) != counts_len:
                raise ValueError(
                    f"evaluation state {path} line {number} is not an image record of "
                    f"{counts_len} counters: pass --restart to start over"
                )
            inputs = record.get("inputs")
            done[str(record["id"])] = ([int(c) for c in counts], inputs)
    return done


def _check_header(
    record: Any, path: Path, state_dir: Path, config: dict[str, Any], want: str
) -> None:
    """The first line of a state file: a glaclip eval state of this version, of this evaluation.

    Raises:
        ValueError: it is not (names what differs).
    """
    version = record.get("glaclip_eval_state") if isinstance(record, dict) else None
    if version is None:
        raise ValueError(f"{path} is not a glaclip eval state file")
    if version != STATE_VERSION:
        raise ValueError(
            f"{path} was written by another glaclip version (state version "
            f"{version}, this one reads {STATE_VERSION}): pass --restart to start "
            "over"
        )
    if record.get("fingerprint") != want:
        what = ", ".join(_differences(record.get("config", {}), config)) or "?"
        raise ValueError(
            f"{state_dir} holds the state of a different evaluation (differs in: "
            f"{what}): pass --restart to discard it, or choose another --out"
        )


def check_state(
    out_dir: str | os.PathLike, task: EvalTask, settings: dict[str, Any], models: dict[str, Any]
) -> None:
    """Refuse, before any model work, an ``out_dir`` that cannot take this evaluation.

    Args:
        settings: the run's flat settings (``Settings.to_dict()``).

    Raises:
        ValueError: ``out_dir`` is a file, or holds the state of another evaluation (names
            what differs) or a damaged one.
    """
    out = check_output_folder(out_dir)
    config = state_config(task, settings, models)
    read_state(out / STATE_DIR, config, SegMetric.tensor_length(len(task.class_lines)))


class StateWriter:
    """Appends one line per finished image to this rank's state file (flushed and fsynced)."""

    def __init__(self, state_dir: Path, rank: int, config: dict[str, Any]) -> None:
        self.path = state_dir / f"rank{rank}.jsonl"
        try:
            state_dir.mkdir(parents=True, exist_ok=True)
            if self.path.exists():  # cut a torn last line so the next record starts cleanly
                data = self.path.read_bytes()
                keep = data.rfind(b"\n") + 1
                if keep != len(data):
                    os.truncate(self.path, keep)
            self._file = open(self.path, "a", encoding="utf-8")  # closed in close()
        except OSError as err:
            raise write_error(self.path, err) from None
        if self._file.tell() == 0:
            header = {
                "glaclip_eval_state": STATE_VERSION,
                "fingerprint": fingerprint(config),
                "config": config,
            }
            self._write(header)

    def _write(self, record: dict[str, Any]) -> None:
        line = json.dumps(record, separators=(",", ":"), default=str, allow_nan=False) + "\n"
        try:
            self._file.write(line)
            self._file.flush()
            os.fsync(self._file.fileno())
        except OSError as err:
            raise write_error(self.path, err) from None

    def add(self, sample_id: str, metric: SegMetric, inputs: str | None = None) -> None:
        """Record one finished image, its counters and the digest of its files
        (``input_fingerprint``)."""
        record = {"id": sample_id, "counts": metric.to_tensor().tolist()}
        if inputs is not None:
            record["inputs"] = inputs
        self._write(record)

    def close(self) -> None:
        """Close the file (a line that could not be flushed is tried once more).

        Raises:
            WriteError: naming the state file (a full disk).
        """
        try:
            self._file.close()
        except OSError as err:
            raise write_error(self.path, err) from None


def _check_agreement(done_flags: np.ndarray, dist: DistInfo) -> None:
    """All ranks must see the same finished images (OUT shared by every node)."""
    if not dist.enabled:
        return
    total = all_reduce_sum(torch.from_numpy(done_flags.astype(np.int64)), dist).numpy()
    if not np.all((total == 0) | (total == dist.world_size)):
        raise ValueError(
            "the ranks see different evaluation state files: --out must be a folder shared by "
            "every node to resume; pass --restart to start over"
        )


def state_config(
    task: EvalTask, settings: dict[str, Any], models: dict[str, Any]
) -> dict[str, Any]:
    """What a resume must match: task identity, settings (runtime-only ones left out), models."""
    kept = {k: v for k, v in settings.items() if k not in _RUNTIME_ONLY}
    return {"task": task.identity(), "settings": kept, "models": models}


def resume(
    state_dir: Path, task: EvalTask, config: dict[str, Any], restart: bool, dist: DistInfo
) -> tuple[SegMetric, list[str]]:
    """The summed counters of ``task``'s images finished before, and their ids (task order).

    With ``restart``, rank 0 first deletes the state files. Every rank reads the state
    (``read_records``), and all ranks must see the same finished images (``_check_agreement``);
    no rank returns before every rank has read the state, so that none appends to it early.
    An image whose files are no longer those it was evaluated from (``input_fingerprint``)
    is not finished: it is evaluated again, and a ``RuntimeWarning`` names it.

    Raises:
        ValueError: the state of another evaluation (without ``restart``), a damaged state
            file, or ranks that see different state files.
    """
    num_classes = len(task.class_lines)
    if restart and dist.is_main and state_dir.is_dir():
        for path in state_dir.glob("rank*.jsonl"):
            path.unlink()
    barrier(dist)
    records = read_records(state_dir, config, SegMetric.tensor_length(num_classes))
    done, changed = {}, []
    for sample in task.samples:
        if sample.id in records:
            counts, inputs = records[sample.id]
            if inputs == input_fingerprint(sample):
                done[sample.id] = counts
            else:
                changed.append(sample.id)
    if changed and dist.is_main:
        shown = ", ".join(changed[:_SHOWN]) + (
            f" and {len(changed) - _SHOWN} more" if len(changed) > _SHOWN else ""
        )
        warnings.warn(
            f"{len(changed)} image(s) of {state_dir.parent} changed since they were evaluated "
            f"(their image or label file differs): {shown}; evaluating them again",
            RuntimeWarning,
            stacklevel=2,
        )
    ids = [s.id for s in task.samples]
    _check_agreement(np.array([i in done for i in ids], dtype=bool), dist)
    barrier(dist)  # every rank has read the state before any rank appends to it
    prior = SegMetric(num_classes)
    for sid in ids:
        if sid in done:
            prior.merge(SegMetric.from_tensor(torch.tensor(done[sid], device="cpu"), num_classes))
    return prior, [i for i in ids if i in done]
