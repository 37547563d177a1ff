"""The LoRA folder's file names are importable without torch: datasets, cards and the web page use them."""

import json
import subprocess
import sys

from machining_t2v.lora.files import LORA_FILES, LORA_INFO_FILENAME


def test_the_file_names_load_without_torch():
    code = ("import json, sys\n"
            "import machining_t2v.lora.files\n"
            "print(json.dumps('torch' in sys.modules))")
    process = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert process.returncode == 0, process.stderr[-1000:]
    assert json.loads(process.stdout.strip().splitlines()[-1]) is False


def test_a_lora_folder_lists_each_file_once_with_the_info_file():
    assert len(set(LORA_FILES)) == len(LORA_FILES) == 4
    assert LORA_INFO_FILENAME in LORA_FILES
    assert all(name.endswith(".safetensors") for name in LORA_FILES if name != LORA_INFO_FILENAME)
