"""MammoRG's configuration: one plain dataclass that rebuilds the model, saved beside its weights.

Two presets share every code path: ``full`` (frozen VersaMammo B5 at 512 -> 16x16x2048 tokens
per view, a Vicuna-7B-class Llama loaded from a local directory, 1029 soft tokens) and ``tiny``
(the tiny VersaMammo student -> 4x4 tokens per view, a two-layer Llama built from ``lm`` for CPU).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace
from typing import TYPE_CHECKING, Any

from models.versamammo.config import VersaMammoConfig, student_preprocess_config
from models.versamammo.config import config_for as versamammo_config

if TYPE_CHECKING:
    from models.preprocess import PreprocessConfig

IMAGE_PLACEHOLDER = "<image>"
VIEWS: tuple[str, ...] = ("R-CC", "R-MLO", "L-CC", "L-MLO")  # the LLM prefix order

# vicuna_v1, as the official stage-2 SFT uses it (instruction in English here).
VICUNA_PROMPT = (
    "A chat between a curious user and an artificial intelligence assistant. The assistant gives "
    "helpful, detailed, and polite answers to the user's questions. USER: <image>\n"
    "Write the screening mammography report of these four views, with FINDINGS and IMPRESSION. ASSISTANT:"
)
TINY_PROMPT = "USER: <image>\nWrite the report. ASSISTANT:"


@dataclass
class MammoRGConfig:
    """Everything that shapes a MammoRG model (the tokenizer and the weights aside).

    ``lm`` holds ``transformers.LlamaConfig`` keyword arguments for a language model built from
    configuration (random init, tiny); ``lm_path`` names a local Hugging Face directory instead
    (any causal LM; the full config expects a Vicuna-7B-class Llama). ``vocab_size`` is filled in
    from the tokenizer. ``knowledge`` off drops the graph and report tokens (the ablation).
    """

    size: str
    vision_size: str                     # VersaMammo preset of the frozen student
    vision_dim: int                      # channels of the student's feature grid
    vision_grid: int                     # token grid side: vision_grid**2 tokens per view
    graph_layers: int = 4                # residual RGCN layers
    cross_heads: int = 8
    retrieval_temperature: float = 0.05  # softmax temperature over cosine similarity to the report bank
    knowledge: bool = True               # graph token per view + report token
    lm: dict[str, Any] = field(default_factory=dict)
    lm_path: str | None = None
    lm_dtype: str | None = None          # dtype lm_path's weights load in ("bfloat16" at full size); None = as saved
    prompt: str = VICUNA_PROMPT
    max_new_tokens: int = 512
    num_beams: int = 1
    # The images the frozen encoder sees (a PreprocessConfig dict). None: the student's own
    # (squash, its normalisation). An imported official MammoRG sets the official geometry
    # (shortest side, centre crop, 0.5/0.5): export writes it into the package manifest.
    preprocessing: dict[str, Any] | None = None
    # The student's feature grid is average-pooled by this factor before it becomes tokens
    # (vision_grid = student grid / vision_pool): a student at twice the tiny input (512 px, a
    # 16 x 16 grid) keeps the tiny language model's 8 x 8 tokens per view. 1 = the official tokens.
    vision_pool: int = 1
    # Filled in while building: sizes of the buffers that travel with the weights.
    vocab_size: int = 0
    base_vocab_size: int = 0             # rows before the atomic lexicon terms were added
    graph_nodes: int = 0
    bank_size: int = 0
    embed_dim: int = 0                   # LM hidden size (node features and bank live in it)

    def __post_init__(self) -> None:
        if self.prompt.count(IMAGE_PLACEHOLDER) != 1:
            raise ValueError(f"prompt must contain {IMAGE_PLACEHOLDER!r} exactly once")
        if self.lm_path is None and not self.lm:
            raise ValueError("set lm (a LlamaConfig for a model built from config) or lm_path (a local directory)")
        if self.vision_dim % self.cross_heads:
            raise ValueError(f"vision_dim {self.vision_dim} is not divisible by cross_heads {self.cross_heads}")
        if self.lm_dtype not in (None, "float32", "bfloat16", "float16"):
            raise ValueError(f"lm_dtype must be float32, bfloat16 or float16, not {self.lm_dtype!r}")
        if self.vision_pool < 1:
            raise ValueError(f"vision_pool must be >= 1, not {self.vision_pool}")
        if self.num_beams < 1 or self.max_new_tokens < 1:
            raise ValueError("num_beams and max_new_tokens must be >= 1")

    @property
    def tokens_per_view(self) -> int:
        return self.vision_grid ** 2

    @property
    def prefix_tokens(self) -> int:
        """Soft tokens in the LLM prefix: 4 x (graph + grid tokens) + report (1029 at full size)."""
        per_view = self.tokens_per_view + (1 if self.knowledge else 0)
        return len(VIEWS) * per_view + (1 if self.knowledge else 0)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _preset(size: str, vision_size: str, **kwargs: Any) -> MammoRGConfig:
    v = versamammo_config(vision_size)
    return MammoRGConfig(size=size, vision_size=vision_size, vision_dim=v.student_dim,
                         vision_grid=v.student_grid, **kwargs)


def config_for(size: str, **overrides: Any) -> MammoRGConfig:
    """The ``full`` or ``tiny`` preset, with keyword overrides (``lm_path=...`` for full)."""
    if size == "full":
        base = _preset("full", "full", cross_heads=32, lm_path=overrides.pop("lm_path", None) or "lm",
                       lm_dtype="bfloat16", prompt=VICUNA_PROMPT, max_new_tokens=1024)
    elif size == "tiny":
        base = _preset("tiny", "tiny", graph_layers=2, cross_heads=8, prompt=TINY_PROMPT, max_new_tokens=160,
                       lm={"hidden_size": 128, "intermediate_size": 344, "num_hidden_layers": 2,
                           "num_attention_heads": 4, "num_key_value_heads": 4, "max_position_embeddings": 512,
                           "rms_norm_eps": 1e-5, "tie_word_embeddings": False})
    else:
        raise ValueError(f"unknown MammoRG size {size!r}; expected 'full' or 'tiny'")
    return replace(base, **overrides) if overrides else base


def preprocess_config(cfg: MammoRGConfig, vision: VersaMammoConfig) -> "PreprocessConfig":
    """What MammoRG's encoder sees: ``cfg.preprocessing`` when set, else the student's serving
    preprocessing. Training (token cache), export (manifest, golden vectors) and so the node all
    take it from here, so an imported official model sees what it was trained on."""
    from models.preprocess import PreprocessConfig

    if cfg.preprocessing is None:
        return student_preprocess_config(vision)
    pre = PreprocessConfig.from_dict(cfg.preprocessing)
    if pre.size != (vision.student_input, vision.student_input):
        raise ValueError(f"preprocessing size {pre.size} does not match the student's input {vision.student_input}")
    return pre


def config_from_dict(data: dict[str, Any]) -> MammoRGConfig:
    """Rebuild a saved config; unknown keys fail (a file from a newer version is not guessed at)."""
    known = {f.name for f in fields(MammoRGConfig)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"unknown MammoRG config keys: {unknown}")
    return MammoRGConfig(**data)
