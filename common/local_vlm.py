"""A SmolVLM backbone folder (config + processor + tokenizer) generated in code, for offline use.

SmolVLA always calls ``AutoConfig`` / ``AutoProcessor`` / ``AutoTokenizer.from_pretrained`` on its
``vlm_model_name``, even when the weights come from a SmolVLA checkpoint. Without the Hub this
fails, so tests, CI, the demo and the benchmarks point ``vlm_model_name`` at a folder written
here with transformers' own ``save_pretrained``: the same classes and code path as the real
SmolVLM2, only the sizes differ. The folder is deterministic (same dims -> same files), so the
SuperLink and every site can generate it independently and agree.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

# Special tokens the SmolVLM processor looks up on its tokenizer.
_SPECIAL = {
    "fake_image_token": "<fake_token_around_image>",
    "image_token": "<image>",
    "global_image_token": "<global-img>",
    "end_of_utterance_token": "<end_of_utterance>",
}
_BASE_TOKENS = ["<pad>", "<unk>", "<|im_start|>", "<|im_end|>", "\n", *_SPECIAL.values()]
# Words of the demo tasks and of common SO-100 task strings; anything else maps to <unk>.
_WORDS = [
    "a",
    "an",
    "the",
    "and",
    "to",
    "in",
    "on",
    "of",
    "into",
    "from",
    "with",
    "at",
    "for",
    "it",
    "its",
    "up",
    "down",
    "left",
    "right",
    "front",
    "back",
    "top",
    "pick",
    "place",
    "put",
    "push",
    "pull",
    "lift",
    "grasp",
    "grab",
    "move",
    "open",
    "close",
    "stack",
    "sort",
    "slide",
    "insert",
    "rotate",
    "cube",
    "block",
    "bowl",
    "box",
    "drawer",
    "cup",
    "ball",
    "pen",
    "lego",
    "object",
    "objects",
    "tray",
    "bin",
    "plate",
    "container",
    "red",
    "green",
    "blue",
    "yellow",
    "orange",
    "purple",
    "black",
    "white",
    "pink",
    "brown",
    "small",
    "big",
    "large",
    "table",
    "robot",
    "arm",
    "gripper",
    "side",
    "middle",
    "center",
    "corner",
]


@dataclass(frozen=True)
class VLMDims:
    """Sizes of a SmolVLM (llama text model + SigLIP-style vision encoder)."""

    text_hidden: int
    text_layers: int
    text_heads: int
    text_kv_heads: int
    text_head_dim: int
    text_intermediate: int
    vocab_size: int
    vision_hidden: int
    vision_layers: int
    vision_heads: int
    vision_intermediate: int
    patch_size: int
    image_size: int
    scale_factor: int


# Small enough for ~0.02 s per training step on a CPU core.
TINY = VLMDims(
    text_hidden=64,
    text_layers=4,
    text_heads=4,
    text_kv_heads=2,
    text_head_dim=16,
    text_intermediate=128,
    vocab_size=256,
    vision_hidden=32,
    vision_layers=2,
    vision_heads=2,
    vision_intermediate=64,
    patch_size=8,
    image_size=64,
    scale_factor=2,
)
# The architecture of HuggingFaceTB/SmolVLM2-500M-Video-Instruct (SmolVLA's backbone).
SMOLVLM2_500M = VLMDims(
    text_hidden=960,
    text_layers=32,
    text_heads=15,
    text_kv_heads=5,
    text_head_dim=64,
    text_intermediate=2560,
    vocab_size=49280,
    vision_hidden=768,
    vision_layers=12,
    vision_heads=12,
    vision_intermediate=3072,
    patch_size=16,
    image_size=512,
    scale_factor=4,
)


def default_cache_dir() -> Path:
    """Where generated presets live: ``$ZK0_CACHE`` or ``~/.cache/zk0``."""
    return Path(os.environ.get("ZK0_CACHE", Path.home() / ".cache" / "zk0")).expanduser()


def _tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(_BASE_TOKENS + _WORDS)}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Split("\n", behavior="isolated"), pre_tokenizers.WhitespaceSplit()]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=core,
        unk_token="<unk>",
        pad_token="<pad>",
        bos_token="<|im_start|>",
        eos_token="<end_of_utterance>",
        extra_special_tokens=_SPECIAL,
        model_max_length=2048,
    )


def _config(dims: VLMDims, tokenizer):
    from transformers import SmolVLMConfig

    image_token_id = tokenizer.convert_tokens_to_ids(_SPECIAL["image_token"])
    return SmolVLMConfig(
        text_config={
            "model_type": "llama",
            "hidden_size": dims.text_hidden,
            "num_hidden_layers": dims.text_layers,
            "num_attention_heads": dims.text_heads,
            "num_key_value_heads": dims.text_kv_heads,
            "head_dim": dims.text_head_dim,
            "intermediate_size": dims.text_intermediate,
            "vocab_size": dims.vocab_size,
            "max_position_embeddings": 8192,
            "rms_norm_eps": 1e-5,
            "pad_token_id": tokenizer.pad_token_id,
        },
        vision_config={
            "hidden_size": dims.vision_hidden,
            "num_hidden_layers": dims.vision_layers,
            "num_attention_heads": dims.vision_heads,
            "intermediate_size": dims.vision_intermediate,
            "patch_size": dims.patch_size,
            "image_size": dims.image_size,
        },
        scale_factor=dims.scale_factor,
        image_token_id=image_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


def _processor(dims: VLMDims, tokenizer):
    from transformers import SmolVLMImageProcessor, SmolVLMProcessor, SmolVLMVideoProcessor

    size = {"longest_edge": dims.image_size}
    image_seq_len = (dims.image_size // dims.patch_size) ** 2 // dims.scale_factor**2
    return SmolVLMProcessor(
        image_processor=SmolVLMImageProcessor(
            do_image_splitting=False, size=size, max_image_size=size
        ),
        video_processor=SmolVLMVideoProcessor(size=size, max_image_size=size),
        tokenizer=tokenizer,
        image_seq_len=image_seq_len,
    )


def write_local_vlm(dims: VLMDims, out_dir: Path | None = None) -> Path:
    """Write (once) and return a SmolVLM folder that ``from_pretrained`` loads offline.

    Written into a temporary sibling and renamed into place, so a folder that exists is whole
    even if two processes (a SuperNode and its neighbour) generate it at the same time.
    """
    name = "vlm-" + "-".join(str(v) for v in asdict(dims).values())
    out = Path(out_dir) if out_dir else default_cache_dir() / "vlm" / name
    if (out / "zk0_vlm.json").exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=out.parent))
    try:
        tokenizer = _tokenizer()
        _config(dims, tokenizer).save_pretrained(tmp)
        _processor(dims, tokenizer).save_pretrained(tmp)
        (tmp / "zk0_vlm.json").write_text(json.dumps(asdict(dims), indent=2))
        try:
            os.rename(tmp, out)
        except OSError:  # another process won the race; its folder is just as good
            if not (out / "zk0_vlm.json").exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out
