"""Security checks: what the code may load, where servers listen, and where data names may lead.

1. Weights: every ``torch.load`` passes ``weights_only=True``; every ``from_pretrained`` of model
   weights passes ``use_safetensors=True`` (tokenizers, schedulers, processors and configs hold no
   pickles); no ``trust_remote_code`` other than ``False``; no pickle loading in src/ or conf/.
   The source is parsed (``ast``), so a call spread over several lines is still seen.
2. Servers: Kedro-Viz and the MLflow UI bind to 127.0.0.1 by default.
3. Names that come from the data (the ``file`` column of ``metadata.csv``, video and folder names,
   caption text) never make a node read or write outside the data folders: checked on the
   datasets and id helpers directly, and end to end on a real ``data_prep`` run in a fresh
   interpreter that records every file the run opens, renames, removes or decodes.
"""

from __future__ import annotations

import ast
import csv
import json
import os
import random
import re
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import pytest
import yaml

from tests.conftest import PROJECT_ROOT, make_project, write_test_video

SRC = PROJECT_ROOT / "src" / "machining_t2v"
CONF = PROJECT_ROOT / "conf"
# Classes whose from_pretrained reads only JSON/text files (vocabularies, configs), never weights.
NON_WEIGHT_LOADER = re.compile(r"(Tokenizer\w*|Scheduler|Processor\w*|FeatureExtractor|Config)$")


def _source_files() -> list[Path]:
    return sorted(SRC.rglob("*.py"))


def _parse(path: Path) -> ast.Module:
    return ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


def _calls(tree: ast.AST, attribute: str):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == attribute:
            yield node


def _dotted(node: ast.AST) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    return type(node).__name__


def _is_true(node: ast.AST | None) -> bool:
    return isinstance(node, ast.Constant) and node.value is True


def _keyword(call: ast.Call, name: str) -> ast.keyword | None:
    return next((kw for kw in call.keywords if kw.arg == name), None)


def _where(path: Path, node: ast.AST) -> str:
    return f"{path.relative_to(PROJECT_ROOT)}:{node.lineno}"


def _dict_literals_with_key(tree: ast.AST, key: str) -> dict[str, ast.AST]:
    """``name = {..., "key": value, ...}`` (also ``{**other, "key": value}``) assignments: name -> value."""
    found = {}
    for node in ast.walk(tree):
        if isinstance(node, (ast.Assign, ast.AnnAssign)) and isinstance(node.value, ast.Dict):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for k, v in zip(node.value.keys, node.value.values, strict=True):
                if isinstance(k, ast.Constant) and k.value == key:
                    found.update({target.id: v for target in targets if isinstance(target, ast.Name)})
    return found


# --------------------------------------------------------------------------- 1. what gets loaded


def test_every_torch_load_is_weights_only():
    problems, seen = [], 0
    for path in _source_files():
        tree = _parse(path)
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module == "torch" and any(a.name == "load" for a in node.names):
                problems.append(f"{_where(path, node)}: `from torch import load` hides torch.load from this check")
        for call in _calls(tree, "load"):
            if _dotted(call.func.value) != "torch":
                continue
            seen += 1
            keyword = _keyword(call, "weights_only")
            if keyword is None or not _is_true(keyword.value):
                problems.append(f"{_where(path, call)}: torch.load without weights_only=True")
    assert not problems, "\n".join(problems)
    assert seen >= 1, "expected at least the checkpoint loader's torch.load"


def test_model_weights_come_from_safetensors_only():
    problems, checked = [], []
    for path in _source_files():
        tree = _parse(path)
        safetensors_dicts = _dict_literals_with_key(tree, "use_safetensors")
        for call in _calls(tree, "from_pretrained"):
            receiver = _dotted(call.func.value)
            if NON_WEIGHT_LOADER.search(receiver.rsplit(".", 1)[-1]):
                continue
            keyword = _keyword(call, "use_safetensors")
            if keyword is not None:
                ok = _is_true(keyword.value)
            else:  # passed through **kwargs built from a dict literal in the same module
                spread = [kw.value.id for kw in call.keywords if kw.arg is None and isinstance(kw.value, ast.Name)]
                ok = any(_is_true(safetensors_dicts.get(name)) for name in spread)
            checked.append(receiver)
            if not ok:
                problems.append(f"{_where(path, call)}: {receiver}.from_pretrained without use_safetensors=True")
    assert not problems, "\n".join(problems)
    assert {"UNet2DConditionModel", "AutoencoderKL", "CLIPTextModel", "MotionAdapter"} <= set(checked)


def test_no_remote_code_is_ever_trusted():
    problems = []
    for path in _source_files():
        for call in (n for n in ast.walk(_parse(path)) if isinstance(n, ast.Call)):
            keyword = _keyword(call, "trust_remote_code")
            if keyword is not None and not (isinstance(keyword.value, ast.Constant) and keyword.value.value is False):
                problems.append(f"{_where(path, call)}: trust_remote_code={ast.unparse(keyword.value)}")
    # Configuration, notebooks, set-up and the other tests, as text.
    pattern = re.compile(r"trust_remote_code\W{0,3}\s*[=:]\s*(true|1|yes)\b", re.IGNORECASE)
    texts = [*CONF.rglob("*.yml"), *CONF.rglob("*.yaml"), *(PROJECT_ROOT / "notebooks").glob("*"),
             *(p for p in (PROJECT_ROOT / "tests").rglob("*.py") if p.name != Path(__file__).name),
             PROJECT_ROOT / "Makefile", PROJECT_ROOT / "pyproject.toml"]
    for path in texts:
        if path.is_file():
            for number, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
                if pattern.search(line):
                    problems.append(f"{path.relative_to(PROJECT_ROOT)}:{number}: {line.strip()}")
    assert not problems, "\n".join(problems)


def test_nothing_is_unpickled_from_src_or_conf():
    unpicklers = {"pickle", "cPickle", "_pickle", "dill", "cloudpickle", "joblib", "shelve", "marshal"}
    problems = []
    for path in _source_files():
        for node in ast.walk(_parse(path)):
            if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in unpicklers:
                if any(a.name in ("load", "loads", "Unpickler", "open") for a in node.names):
                    problems.append(f"{_where(path, node)}: from {node.module} import ...load")
            if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute):
                continue
            owner, attr = _dotted(node.func.value), node.func.attr
            if owner.split(".")[0] in unpicklers and attr in ("load", "loads", "Unpickler", "open"):
                problems.append(f"{_where(path, node)}: {owner}.{attr}")
            if attr == "read_pickle":
                problems.append(f"{_where(path, node)}: {owner}.read_pickle")
            allow = _keyword(node, "allow_pickle")
            if allow is not None and not (isinstance(allow.value, ast.Constant) and allow.value.value is False):
                problems.append(f"{_where(path, node)}: allow_pickle={ast.unparse(allow.value)}")
    for path in [*CONF.rglob("*.yml"), *CONF.rglob("*.yaml")]:
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if re.search(r"pickle|joblib", line.split("#", 1)[0], re.IGNORECASE):
                problems.append(f"{path.relative_to(PROJECT_ROOT)}:{number}: {line.strip()}")
    assert not problems, "\n".join(problems)


# --------------------------------------------------------------------------- 2. servers


def test_servers_listen_on_localhost_by_default():
    makefile = (PROJECT_ROOT / "Makefile").read_text(encoding="utf-8")
    commands = [line.strip() for line in makefile.splitlines()
                if re.search(r"kedro viz( run)?\b|mlflow (ui|server)\b|machining-t2v serve\b", line)
                and not line.lstrip().startswith("#")]
    servers = [c for c in commands if "viz build" not in c]
    assert any("kedro viz" in c for c in servers) and any("mlflow ui" in c for c in servers), commands
    assert any("machining-t2v serve" in c for c in servers), commands  # make demo, the web page
    for command in servers:
        assert re.search(r"--host[ =]127\.0\.0\.1\b", command), f"Makefile: {command} does not bind 127.0.0.1"
    mlflow = yaml.safe_load((CONF / "base" / "mlflow.yml").read_text(encoding="utf-8"))
    assert str(mlflow["ui"]["host"]) == "127.0.0.1"
    # Nothing binds the wildcard address either.
    for path in [*_source_files(), *CONF.rglob("*.yml"), PROJECT_ROOT / "Makefile"]:
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            assert "0.0.0.0" not in line, f"{path.relative_to(PROJECT_ROOT)}:{number}: {line.strip()}"


# --------------------------------------------------------------------------- 3. names from the data

HOSTILE_METADATA_FILES = ["../../etc/passwd", "/etc/passwd", "../../../outside/secret.mp4", "../outside/secret.txt",
                          "..", "videos/../../outside/secret.mp4"]


def _hostile_raw_folder(raw: Path, outside: Path) -> dict[str, str]:
    """Videos with '..' in their names and folders, and a metadata.csv naming files outside ``raw``.

    Returns the videos that must be processed (name -> expected caption source).
    """
    write_test_video(outside / "secret.mp4", num_frames=24, seed=9)
    (outside / "secret.txt").write_text("SECRET-CANARY", encoding="utf-8")
    write_test_video(raw / "a..b.mp4", num_frames=24)
    write_test_video(raw / "clip\\..\\..\\evil.mp4", num_frames=24, seed=1)  # a Windows-style traversal name
    # Folders called "..." and "..up" are hidden folders: their videos are never read.
    write_test_video(raw / "..." / "deep.webm", num_frames=24, seed=2)
    write_test_video(raw / "..up" / "x.mp4", num_frames=24, seed=3)
    write_test_video(raw / "deep..webm", num_frames=24, seed=4)
    (raw / "deep..txt").write_text("../../../../etc/passwd", encoding="utf-8")  # a caption that is a path
    rows = [*HOSTILE_METADATA_FILES, str(outside / "secret.mp4"), "a..b.mp4"]
    with (raw / "metadata.csv").open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["file", "caption", "process"])
        writer.writerows([name, f"caption naming {name}", "milling"] for name in rows)
    return {"a..b.mp4": "metadata_caption", "clip\\..\\..\\evil.mp4": "folder_template",
            "deep..webm": "sidecar"}


def test_metadata_rows_naming_outside_files_match_no_video(tmp_path):
    from machining_t2v.kedro_glue.datasets import VideoFolderDataset

    raw = tmp_path / "data" / "videos"
    expected = _hostile_raw_folder(raw, tmp_path / "outside")
    folder = VideoFolderDataset(path=str(raw)).load()
    assert {video.name for video in folder.videos} == set(expected)
    for video in folder.videos:
        assert video.path.resolve().is_relative_to(raw.resolve())
        row = folder.metadata_for(video)
        assert row is None or row["file"] == video.name, (video.name, row)
    assert not any("outside" in video.name or "passwd" in video.name for video in folder.videos)


def _fuzz_names(count: int = 3000) -> list[str]:
    rng = random.Random(0)
    alphabet = ["/", ".", "..", "\\", "_", "-", " ", "a", "Z", "9", "~", "$", ":", "旋盤", "ä", "\n", "%2e", "*"]
    names = ["..", "../..", "/etc/passwd", "../../etc/passwd.mp4", "....mp4", "./.mp4", "a/../../b.mp4", ".mp4",
             "~/x.mp4", "\\\\server\\share\\x.mp4", "C:\\x.mp4", "con.mp4"]
    for _ in range(count):
        stem = "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 12)))
        names.append(stem + rng.choice([".mp4", ".webm", "", ".tar.gz"]))
    return names


def test_sample_ids_are_plain_file_names_that_stay_in_their_folder(tmp_path):
    from machining_t2v.pipelines.frames.nodes import sample_id_prefix

    folder = (tmp_path / "stills").resolve()
    for name in _fuzz_names():
        prefix = sample_id_prefix(name)
        assert prefix and re.fullmatch(r"[A-Za-z0-9_.-]+", prefix), (name, prefix)
        assert not prefix.startswith("."), (name, prefix)
        for suffix in ("_still000.png", "_clip000.png", "_still000.txt"):  # PartitionedDataset: path/id+suffix
            target = (folder / f"{prefix}{suffix}").resolve()
            assert target.parent == folder, (name, target)


def test_distinct_videos_never_share_a_sample_id(tmp_path):
    """Two videos must never write the same still/clip/sidecar file."""
    from machining_t2v.kedro_glue.datasets import VideoFolderDataset
    from machining_t2v.pipelines.frames.nodes import extract_frames_and_clips, merge_chunks

    raw = tmp_path / "videos"
    for number, name in enumerate(["pocket.mp4", "pocket.webm", "milling/face.mp4", "milling__face.mp4",
                                   "旋盤.mp4", "切削.mp4", "Fräsen.mp4", "Frösen.mp4"]):
        write_test_video(raw / name, num_frames=24, seed=number)
    params = {"resolution": 32, "num_frames": 4, "frame_stride": 2, "target_fps": None, "clips_per_video": 1,
              "stills_per_video": 2, "min_motion": 0.0}
    folder = VideoFolderDataset(path=str(raw)).load()
    stills, clips, manifest, _ = merge_chunks(extract_frames_and_clips(folder, params))
    owners = manifest.groupby("sample_id")["video"].nunique()
    assert (owners == 1).all(), f"ids shared by several videos: {owners[owners > 1].to_dict()}"
    assert len(stills) == 2 * 8 and len(clips) == 8


def test_video_folder_save_never_writes_outside_its_folder(tmp_path):
    import numpy as np
    from kedro.io import DatasetError

    from machining_t2v.kedro_glue.datasets import SampleVideo, VideoFolderDataset

    outside = tmp_path / "outside"
    outside.mkdir()
    root = tmp_path / "data" / "videos"
    root.mkdir(parents=True)
    (root / "link").symlink_to(outside, target_is_directory=True)
    frames = np.zeros((4, 16, 16, 3), np.uint8)
    for name in ["../escape.mp4", "../../escape.mp4", str(outside / "abs.mp4"), "sub/../../escape.mp4",
                 "link/through_symlink.mp4"]:
        dataset = VideoFolderDataset(path=str(root))
        video = SampleVideo(frames=frames, fps=4.0, metadata={"file": name})
        with pytest.raises(DatasetError, match="outside"):
            dataset.save({name: lambda video=video: video})
    assert not any(outside.iterdir()), sorted(os.listdir(outside))
    assert not any(p.suffix in (".mp4", ".csv") for p in tmp_path.rglob("*")), sorted(map(str, tmp_path.rglob("*")))


def test_sample_video_names_cannot_be_paths(tmp_path):
    import numpy as np
    from kedro.io import DatasetError

    from machining_t2v.kedro_glue.datasets import VideoSamplesDataset

    frames = np.zeros((2, 16, 16, 3), np.uint8)
    for name in ["../escape", "/tmp/escape", "sub/escape", ".hidden", ".."]:
        with pytest.raises(DatasetError, match="plain file name"):
            VideoSamplesDataset(path=str(tmp_path / "samples")).save({name: frames})
    assert not [p for p in tmp_path.rglob("*") if p.is_file()]


def test_lora_folder_touches_only_its_own_folder(tmp_path):
    """Saving "no LoRA" clears stale LoRA files in the folder itself, never beside or below it."""
    from machining_t2v.kedro_glue.datasets import LoraFolderDataset, TrainedLora

    models = tmp_path / "06_models"
    folder = models / "motion_ft_spatial_lora"
    keep = [models / "other.safetensors", models / "info.json", folder / "nested" / "keep.safetensors",
            folder / "notes.md", tmp_path / "lora_info.json"]
    stale = [folder / "pytorch_lora_weights.safetensors", folder / "lora_info.json"]
    for path in keep + stale:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")
    LoraFolderDataset(path=str(folder), kind="image").save(TrainedLora(state_dict={}, lora_config={}, kind="image"))
    assert all(path.exists() for path in keep)
    assert not any(path.exists() for path in stale)


# The run is recorded by an audit hook (every open, rename, remove, mkdir from Python) plus wrappers
# around decord's reader and OpenCV's writer (C++ code that opens files without an audit event).
_RECORDED_RUN = textwrap.dedent(
    """
    import json, os, sys
    events = []
    WATCH = {"os.rename", "os.remove", "os.rmdir", "os.mkdir", "shutil.rmtree", "shutil.move", "shutil.copyfile",
             "os.symlink", "os.link", "os.truncate", "os.chmod", "os.chown", "os.utime"}
    WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC

    def absolute(value):
        try:
            return None if isinstance(value, int) else os.path.abspath(os.fsdecode(os.fspath(value)))
        except TypeError:
            return None

    def hook(event, args):
        if event == "open":
            path = absolute(args[0])
            if path is not None:
                mode, flags = args[1], args[2] or 0
                write = bool(flags & WRITE_FLAGS) or (mode is not None and any(c in mode for c in "wax+"))
                events.append(["write" if write else "read", path])
        elif event in WATCH:
            for arg in args[:2]:
                if isinstance(arg, (str, bytes, os.PathLike)):
                    events.append([event, absolute(arg)])

    sys.addaudithook(hook)
    import cv2, decord
    reader, writer = decord.VideoReader, cv2.VideoWriter
    def recording_reader(uri, *args, **kwargs):
        events.append(["decode", absolute(uri)])
        return reader(uri, *args, **kwargs)
    def recording_writer(filename, *args, **kwargs):
        events.append(["encode", absolute(filename)])
        return writer(filename, *args, **kwargs)
    decord.VideoReader, cv2.VideoWriter = recording_reader, recording_writer

    from pathlib import Path
    from kedro.framework.session import KedroSession
    from kedro.framework.startup import bootstrap_project
    bootstrap_project(Path.cwd())
    with KedroSession.create(project_path=Path.cwd(), runtime_params=json.loads(sys.argv[2])) as session:
        session.run(pipeline_names=[sys.argv[1]])
    recorded = list(events)  # the log's own writes below are not part of the run
    with open(sys.argv[3] + ".tmp", "w") as handle:
        json.dump(recorded, handle)
    os.replace(sys.argv[3] + ".tmp", sys.argv[3])
    """
)


def _inside(path: str, folder: Path) -> bool:
    return Path(path).is_relative_to(folder)


def test_hostile_names_make_no_node_read_or_write_outside_the_data_folders(tmp_path):
    import pandas as pd

    project = make_project(tmp_path / "project")
    raw = project / "data" / "01_raw" / "videos"
    outside = tmp_path / "outside"
    expected = _hostile_raw_folder(raw, outside)
    log = tmp_path / "events.json"
    env = {**os.environ, "KEDRO_DISABLE_TELEMETRY": "1", "DO_NOT_TRACK": "1", "MLFLOW_DISABLE_TELEMETRY": "true",
           "PYTHONDONTWRITEBYTECODE": "1", "TQDM_DISABLE": "1"}
    params = {"captions": {"write_sidecars": True}}
    result = subprocess.run([sys.executable, "-c", _RECORDED_RUN, "data_prep", json.dumps(params), str(log)],
                            cwd=project, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]
    events = json.loads(log.read_text())

    data = project / "data"
    # What the run may write: the data layers, Kedro-Viz's run statistics (.viz), MLflow's store
    # (mlruns/, mlflow.db*, its write probe .mlflow-*) and scratch space in the system temp folder
    # outside this test's folder. Nothing else.
    writable = [data, project / ".viz", project / "mlruns"]
    scratch = Path(tempfile.gettempdir()).resolve()
    for kind, path in events:
        if kind in ("read", "decode"):
            assert not _inside(path, outside), f"{kind} outside the data folders: {path}"
            assert path not in ("/etc/passwd", "/etc/shadow"), f"{kind} {path}"
            if kind == "decode":
                assert _inside(path, raw), f"decoded a video outside the raw folder: {path}"
            continue
        if kind == "os.mkdir" and project.is_relative_to(path):
            continue  # mkdir(exist_ok=True) on the project folder or one of its parents
        allowed = (any(_inside(path, folder) for folder in writable) or path == "/dev/null"
                   or (Path(path).parent == project and Path(path).name.lstrip(".").startswith("mlflow"))
                   or (_inside(path, scratch) and not _inside(path, tmp_path)))
        assert allowed, f"{kind} outside the data folders: {path}"
    assert sum(kind == "decode" for kind, _ in events) >= len(expected)

    manifest = pd.read_csv(data / "03_primary" / "frame_manifest.csv")
    assert set(manifest["video"]) == set(expected)
    captions = pd.read_csv(data / "05_model_input" / "captions.csv")
    sources = captions.drop_duplicates("video").set_index("video")["caption_source"].to_dict()
    assert sources == expected
    assert not captions["caption"].str.contains("SECRET-CANARY|root:", regex=True).any()
    sidecars = list((data / "05_model_input" / "stills").glob("*.txt"))
    assert len(sidecars) == (manifest["kind"] == "still").sum() > 0
    assert sorted(p.name for p in outside.iterdir()) == ["secret.mp4", "secret.txt"]
