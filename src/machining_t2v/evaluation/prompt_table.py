"""The evaluation prompts as a table: each prompt with its id, process and split.

No Kedro import, no torch.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping, Sequence
from typing import Any

import pandas as pd

from machining_t2v.evaluation.variants import SPLITS

__all__ = ["prompt_table"]

# Prompt ids name files (frame strips, videos) and clip keys, whose parts "__" separates.
_PROMPT_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9-]*(?:_[A-Za-z0-9-]+)*$")


def prompt_table(prompts: Sequence[Mapping[str, Any]], processes: Collection[str]) -> pd.DataFrame:
    """The evaluation prompts as a table (``prompt_id``, ``prompt``, ``process``, ``split``).

    Each prompt (``id``, ``text``, ``process``, ``split``, as listed in ``evaluation.prompts``)
    names its process (one of ``processes``, so it is compared with reference clips of that
    process) and its split: ``seen`` (like the training captions) or ``held_out`` (e.g. a milling
    direction or material the training videos do not show).

    Raises:
        ValueError: naming the prompt, when the list is empty or a prompt's id, text, split or
            process is not valid, or two prompts share an id.
    """
    if not prompts:
        raise ValueError("evaluation.prompts is empty: list prompts with id, text, process and split")
    processes = set(processes)
    rows = []
    for number, entry in enumerate(prompts):
        prompt_id, text = str(entry.get("id", "")), str(entry.get("text", "") or "").strip()
        process, split = str(entry.get("process", "")), str(entry.get("split", ""))
        where = f"evaluation.prompts[{number}] ({prompt_id or 'no id'})"
        if not _PROMPT_ID_RE.match(prompt_id):
            raise ValueError(f"{where}: id must be letters, digits, '-' and single '_' (it names files)")
        if not text:
            raise ValueError(f"{where}: text is empty")
        if split not in SPLITS:
            raise ValueError(f"{where}: split must be one of {SPLITS}, got {split!r}")
        if process not in processes:
            raise ValueError(f"{where}: process must be one of evaluation.processes {sorted(processes)}, "
                             f"got {process!r}")
        rows.append({"prompt_id": prompt_id, "prompt": text, "process": process, "split": split})
    table = pd.DataFrame(rows, columns=["prompt_id", "prompt", "process", "split"])
    duplicated = table["prompt_id"][table["prompt_id"].duplicated()].tolist()
    if duplicated:
        raise ValueError(f"evaluation.prompts: duplicate ids {duplicated}")
    return table
