"""Conversion one tensor at a time writes the bytes the whole-model conversion wrote: the same
``weights.safetensors`` for float, int8 and 4-bit-head formats, tied and untied, from
safetensors and from GGUF; and it holds no more than about one weight at a time."""

from __future__ import annotations

import weakref
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest
import torch

from gemma_chat.infrastructure.llm.engine import conversion
from gemma_chat.infrastructure.llm.engine.calibration import input_importance
from gemma_chat.infrastructure.llm.engine.checkpoint import (
    Checkpoint,
    GGUFCheckpoint,
    SafetensorsCheckpoint,
)
from gemma_chat.infrastructure.llm.engine.config import Gemma3Config
from gemma_chat.infrastructure.llm.engine.conversion import SafetensorsWriter, convert_weights
from gemma_chat.infrastructure.llm.engine.q8 import (
    BlockBits,
    Q4Linear,
    Q8Kernels,
    pack_weight,
    pack_weight4,
    quantize_model,
    quantize_packed,
    quantize_weight,
    quantize_weight4,
)
from gemma_chat.infrastructure.llm.engine.weights import lean_weight_sources, load_hf_state_dict

from .conversion_checks import assert_same_bytes, save_whole
from .gemma_variants import build_text_model, text_config, write_gguf

# More tokens than one pass of the cache's chunk: the calibration runs several passes.
CALIBRATION_IDS = torch.randint(3, 500, (700,), generator=torch.Generator().manual_seed(1))
FORMATS = {
    "float32": (torch.float32, False, BlockBits()),
    "bfloat16": (torch.bfloat16, False, BlockBits()),
    "int8": (torch.float32, True, BlockBits()),
    "int4-head": (torch.float32, True, BlockBits(head=4, blocks=8)),
    "int4-everywhere": (torch.float32, True, BlockBits(head=4, blocks=4)),
}


def _untied_model() -> object:
    from transformers import Gemma3ForCausalLM

    torch.manual_seed(3)
    config = text_config("4b")
    config.tie_word_embeddings = False
    model = Gemma3ForCausalLM(config).eval()
    with torch.no_grad():
        model.lm_head.weight.normal_(0.0, 0.2)
    return model


@pytest.fixture(scope="module", params=["tied-safetensors", "untied-safetensors", "tied-gguf"])
def checkpoint(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Checkpoint:
    directory = tmp_path_factory.mktemp(request.param)
    if request.param == "tied-gguf":
        return GGUFCheckpoint(write_gguf(build_text_model("1b"), directory / "m.gguf", "Q8_0"))
    model = _untied_model() if request.param.startswith("untied") else build_text_model("27b")
    model.save_pretrained(directory)  # type: ignore[attr-defined]
    return SafetensorsCheckpoint(directory)


def whole_model_conversion(
    checkpoint: Mapping[str, torch.Tensor],
    config: Gemma3Config,
    target: Path,
    *,
    dtype: torch.dtype,
    kernels: Q8Kernels | None,
    bits: BlockBits,
    tied: bool,
) -> None:
    """The conversion as it was before it went tensor by tensor: the whole float model built,
    measured on the calibration text, quantized, saved by safetensors."""
    lean = load_hf_state_dict(config, checkpoint, dtype)
    if kernels is not None:
        importance = None
        if 4 in (bits.head, bits.blocks):
            importance = input_importance(lean, CALIBRATION_IDS.tolist())
        quantize_model(lean, kernels, tied=tied, bits=bits, importance=importance)
    save_whole(lean, target)


@pytest.mark.parametrize("name", list(FORMATS))
def test_tensor_by_tensor_writes_the_bytes_of_the_whole_model_conversion(
    name: str, checkpoint: Checkpoint, kernels: Q8Kernels, tmp_path: Path
) -> None:
    dtype, quantized, bits = FORMATS[name]
    config = Gemma3Config.from_hf(checkpoint.config)
    tied = bool(checkpoint.config["tie_word_embeddings"])
    chosen = kernels if quantized else None
    old_path, new_path = tmp_path / "old.safetensors", tmp_path / "new.safetensors"
    whole_model_conversion(
        checkpoint, config, old_path, dtype=dtype, kernels=chosen, bits=bits, tied=tied
    )
    convert_weights(
        checkpoint,
        lean_weight_sources(config, tied=tied),
        config,
        new_path,
        dtype=dtype,
        kernels=chosen,
        bits=bits,
        tied=tied,
        calibration_ids=CALIBRATION_IDS.tolist(),
    )
    assert_same_bytes(new_path, old_path)


@pytest.mark.parametrize("bits", [8, 4])
def test_quantizing_a_few_rows_at_a_time_gives_the_whole_matrix_bytes(
    bits: int, kernels: Q8Kernels
) -> None:
    # 200 rows: not a multiple of 16 (the last tile padded), and of several 48-row pieces.
    weight = torch.randn((200, 128), generator=torch.Generator().manual_seed(2))
    weight[17] *= 40.0  # the largest scale is in one piece only: the factor is the matrix's
    importance = torch.rand(128, generator=torch.Generator().manual_seed(3))
    if bits == 8:
        expected = pack_weight(*quantize_weight(weight))
    else:
        expected = pack_weight4(*quantize_weight4(kernels, weight, importance))
    pieces = quantize_packed(weight, bits, kernels, importance, rows=48)
    for got, want in zip(pieces, expected, strict=True):
        assert got.dtype == want.dtype
        assert torch.equal(got, want)


def test_the_writer_refuses_a_tensor_of_another_shape_and_a_file_left_incomplete(
    tmp_path: Path,
) -> None:
    layout = {"a": (torch.float32, (2, 3)), "b": (torch.uint8, (5,))}
    writer = SafetensorsWriter(tmp_path / "w.safetensors", layout)
    with pytest.raises(ValueError, match="expected"):
        writer.write("a", torch.zeros(3, 2))
    writer.write("a", torch.zeros(2, 3))
    with pytest.raises(ValueError, match="never written"):
        writer.close()


class CountedCheckpoint(Checkpoint):
    """A checkpoint that counts the bytes of the tensors it gave that are still alive."""

    def __init__(self, checkpoint: Checkpoint) -> None:
        self.checkpoint = checkpoint
        self.architecture, self.config = checkpoint.architecture, checkpoint.config
        self.alive = 0
        self.most_alive = 0
        self.largest_read: dict[str, int] = {}  # bytes, by the checkpoint's name

    def __getitem__(self, name: str) -> torch.Tensor:
        return self._counted(name, self.checkpoint[name])

    def read_rows(self, name: str, index: int | None, start: int, stop: int) -> torch.Tensor:
        return self._counted(name, self.checkpoint.read_rows(name, index, start, stop))

    def shape_of(self, name: str) -> tuple[int, ...]:
        return self.checkpoint.shape_of(name)

    def _counted(self, name: str, tensor: torch.Tensor) -> torch.Tensor:
        size = tensor.numel() * tensor.element_size()
        self.largest_read[name] = max(self.largest_read.get(name, 0), size)
        self.alive += size
        self.most_alive = max(self.most_alive, self.alive)
        weakref.finalize(tensor, self._gone, size)
        return tensor

    def _gone(self, size: int) -> None:
        self.alive -= size

    def __iter__(self) -> Iterator[str]:
        return iter(self.checkpoint)

    def __len__(self) -> int:
        return len(self.checkpoint)


@pytest.mark.parametrize("name", ["int8", "int4-head", "bfloat16"])
def test_a_conversion_holds_one_weight_of_the_checkpoint_at_a_time(
    name: str, kernels: Q8Kernels, tmp_path: Path
) -> None:
    """Without calibration, the checkpoint's tensors alive at once are those of one lean weight
    (q, k and v for qkv); with it (4-bit), those of one block, or the embedding table."""
    dtype, quantized, bits = FORMATS[name]
    model = build_text_model("1b")
    model.save_pretrained(tmp_path / "ckpt")
    checkpoint = SafetensorsCheckpoint(tmp_path / "ckpt")
    config = Gemma3Config.from_hf(checkpoint.config)
    sources = lean_weight_sources(config, tied=True)

    def nbytes(names: tuple[str, ...]) -> int:
        return sum(4 * checkpoint[n].numel() for n in names)

    counted = CountedCheckpoint(checkpoint)
    convert_weights(
        counted,
        sources,
        config,
        tmp_path / "w.safetensors",
        dtype=dtype,
        kernels=kernels if quantized else None,
        bits=bits,
        tied=True,
        calibration_ids=CALIBRATION_IDS.tolist(),
    )
    one_weight = max(nbytes(parts) for parts in sources.values())
    whole_model = sum(nbytes(parts) for parts in sources.values())
    if 4 in (bits.head, bits.blocks):
        blocks = [
            sum(nbytes(p) for n, p in sources.items() if n.startswith(f"blocks.{i}."))
            for i in range(config.num_layers)
        ]
        assert counted.most_alive <= max(one_weight, *blocks)
    else:
        assert counted.most_alive == one_weight
    assert counted.most_alive < whole_model / 2
    assert counted.alive == 0


def test_an_int8_vocabulary_table_is_read_a_piece_of_rows_at_a_time(
    kernels: Q8Kernels, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the tied int8 head is quantized from the table's rows a piece at a time (as Gemma 4's
    # streamed conversion does), never from the whole float table; same bytes
    dtype, _, bits = FORMATS["int8"]
    model = build_text_model("1b")
    model.save_pretrained(tmp_path / "ckpt")
    checkpoint = SafetensorsCheckpoint(tmp_path / "ckpt")
    config = Gemma3Config.from_hf(checkpoint.config)
    sources = lean_weight_sources(config, tied=True)
    table = 4 * checkpoint["embed_tokens.weight"].numel()

    def convert(target: Path) -> CountedCheckpoint:
        counted = CountedCheckpoint(checkpoint)
        convert_weights(
            counted, sources, config, target, dtype=dtype, kernels=kernels, bits=bits, tied=True
        )
        return counted

    whole = convert(tmp_path / "whole.safetensors")
    assert whole.most_alive == table  # one piece holds all its rows
    monkeypatch.setattr(conversion, "WEIGHTS_AT_A_TIME", 64 * config.hidden_size)
    pieces = convert(tmp_path / "pieces.safetensors")
    others = max(
        sum(4 * checkpoint[n].numel() for n in parts)
        for name, parts in sources.items()
        if name != "embed.weight"
    )
    assert pieces.most_alive == others < table  # the largest other weight, whole
    assert (tmp_path / "pieces.safetensors").read_bytes() == (
        tmp_path / "whole.safetensors"
    ).read_bytes()


class _HeadInputs(torch.nn.Module):
    """Stands in for a model's output head: keeps its inputs."""

    def __init__(self) -> None:
        super().__init__()
        self.found: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.found.append(x.reshape(-1, x.shape[-1]).float().clone())
        return x[..., :1]


def test_a_gptq_head_is_fitted_on_the_whole_models_head_inputs(
    checkpoint: Checkpoint, kernels: Q8Kernels, tmp_path: Path
) -> None:
    from safetensors.torch import load_file

    from gemma_chat.infrastructure.llm.engine.gptq import gptq_weight4
    from gemma_chat.infrastructure.llm.engine.kv_cache import KVCache

    tied = bool(checkpoint.config["tie_word_embeddings"])
    if not tied:
        pytest.skip("the GPTQ head is the tied table's")
    config = Gemma3Config.from_hf(checkpoint.config)
    bits = BlockBits(head=4, blocks=8, lookup=8)
    ids = CALIBRATION_IDS.tolist()
    gen = torch.Generator().manual_seed(2)
    text = [[2, *ids[:300]], [2, *ids[300:]]]
    samples = [[2, *torch.randint(3, 500, (40,), generator=gen).tolist()] for _ in range(3)]
    target = tmp_path / "new.safetensors"
    convert_weights(
        checkpoint,
        lean_weight_sources(config, tied=tied),
        config,
        target,
        dtype=torch.float32,
        kernels=kernels,
        bits=bits,
        tied=tied,
        calibration_ids=ids,
        head_sequences=(text, samples),
    )
    written = load_file(target)
    # the same head inputs from the whole float model, op by op
    lean = load_hf_state_dict(config, checkpoint, torch.float32)
    table = lean.embed.weight.detach().clone()
    recorder = _HeadInputs()
    lean.lm_head = recorder
    for sequence in text + samples:
        cache = KVCache(config, slots=1, dtype=torch.float32)
        with torch.inference_mode():
            tokens = torch.tensor([sequence])
            positions = torch.arange(len(sequence)).view(1, -1)
            lean(tokens, positions, torch.tensor([0]), cache, last_only=False)
    text_x = torch.cat(recorder.found[: len(text)])
    x = torch.cat(recorder.found).double()
    values = gptq_weight4(kernels, table, x.T @ x / x.shape[0], (text_x * text_x).mean(dim=0))
    n = table.shape[0]

    def restored(packed: tuple[torch.Tensor, torch.Tensor, torch.Tensor]) -> torch.Tensor:
        return kernels.rows(Q4Linear(kernels, packed, n), torch.arange(n))

    def output_error(weight: torch.Tensor) -> float:
        return float(((x.float() @ (weight - table).T) ** 2).mean())

    head = (written["lm_head.q"], written["lm_head.scale"], written["lm_head.scale_factor"])
    plain = pack_weight4(*quantize_weight4(kernels, table, (text_x * text_x).mean(dim=0)))
    # GPTQ's rounding carries each error forward, so float sums in another order can move
    # later roundings: the products' error is compared, not the bytes
    fitted, reference = output_error(restored(head)), output_error(restored(pack_weight4(*values)))
    assert abs(fitted - reference) < 0.05 * reference
    assert fitted < 0.8 * output_error(restored(plain))
    # the lookups read an int8 copy of the float table, per-weight rounded
    lookup = pack_weight(*quantize_weight(table))
    assert torch.equal(written["embed_lookup.table.q"], lookup[0])
    assert torch.equal(written["embed_lookup.table.scale"], lookup[1])


@pytest.mark.parametrize("name", ["bfloat16", "int4-head", "int4-everywhere"])
def test_the_vocabulary_table_in_pieces_gives_the_bytes_of_reading_it_whole(
    name: str, kernels: Q8Kernels, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # pieces of 16 rows of a 501-row table (the last of 5: GPTQ's joins the piece before); the
    # table is never read whole: the float one cast piece by piece, the calibration given the
    # rows it looks up, the GPTQ head rounded piece by piece
    from transformers import Gemma3ForCausalLM

    dtype, _, bits = FORMATS[name]
    torch.manual_seed(4)
    Gemma3ForCausalLM(text_config("1b", vocab=501)).save_pretrained(tmp_path / "ckpt")
    checkpoint = SafetensorsCheckpoint(tmp_path / "ckpt")
    config = Gemma3Config.from_hf(checkpoint.config)
    sources = lean_weight_sources(config, tied=True)
    gen = torch.Generator().manual_seed(2)
    ids = CALIBRATION_IDS.tolist()
    text = [[2, *ids[:300]], [2, *ids[300:]]]
    samples = [[2, *torch.randint(3, 500, (40,), generator=gen).tolist()] for _ in range(3)]
    quantized = name != "bfloat16"

    def convert(target: Path) -> CountedCheckpoint:
        counted = CountedCheckpoint(checkpoint)
        convert_weights(
            counted,
            sources,
            config,
            target,
            dtype=dtype,
            kernels=kernels if quantized else None,
            bits=bits,
            tied=True,
            calibration_ids=ids,
            head_sequences=(text, samples) if bits.head == 4 else None,
        )
        return counted

    convert(tmp_path / "whole.safetensors")
    monkeypatch.setattr(conversion, "WEIGHTS_AT_A_TIME", 16 * config.hidden_size)
    pieces = convert(tmp_path / "pieces.safetensors")
    table = 4 * checkpoint["embed_tokens.weight"].numel()
    assert pieces.largest_read["embed_tokens.weight"] < table / 4  # 16 rows, or 21 at the end
    assert (tmp_path / "pieces.safetensors").read_bytes() == (
        tmp_path / "whole.safetensors"
    ).read_bytes()


def test_a_failed_conversion_raises_its_own_error_not_the_unwritten_tensors(
    kernels: Q8Kernels, tmp_path: Path
) -> None:
    model = build_text_model("1b")
    model.save_pretrained(tmp_path / "ckpt")
    checkpoint = SafetensorsCheckpoint(tmp_path / "ckpt")
    config = Gemma3Config.from_hf(checkpoint.config)
    dtype, _, bits = FORMATS["int4-everywhere"]
    with pytest.raises(ValueError, match="outside the embedding table"):
        convert_weights(
            checkpoint,
            lean_weight_sources(config, tied=True),
            config,
            tmp_path / "w.safetensors",
            dtype=dtype,
            kernels=kernels,
            bits=bits,
            tied=True,
            calibration_ids=[5, 10**6],
        )


def test_gptq_in_pieces_gives_the_whole_heads_bytes_also_with_a_short_last_piece(
    kernels: Q8Kernels, tmp_path: Path
) -> None:
    # BLAS rounds a product a few rows wide otherwise than the same rows of a wider one: a last
    # piece of 8 rows gave other 4-bit values (it now joins the piece before it)
    from safetensors.torch import load_file

    from gemma_chat.infrastructure.llm.engine.gptq import gptq_weight4

    class Rows:
        def __init__(self, values: torch.Tensor) -> None:
            self.values, self.shape = values, tuple(values.shape)

        def read(self, start: int, stop: int) -> torch.Tensor:
            return self.values[start:stop].clone()

    width, piece = 1152, 512
    gen = torch.Generator().manual_seed(0)
    weight = torch.randn(2 * piece + 8, width, generator=gen) * 0.05
    x = torch.randn(2000, width, generator=gen).double()
    x[:, :5] *= 20
    covariance, importance = x.T @ x / x.shape[0], (x.float() ** 2).mean(dim=0)
    whole = pack_weight4(*gptq_weight4(kernels, weight, covariance, importance))
    names = ("lm_head.q", "lm_head.scale", "lm_head.scale_factor")
    layout = {name: (t.dtype, tuple(t.shape)) for name, t in zip(names, whole, strict=True)}
    writer = SafetensorsWriter(tmp_path / "head.safetensors", layout)
    rows = Rows(weight)
    conversion._gptq_rows(writer, rows, kernels, (covariance, importance), piece * width)  # type: ignore[arg-type]
    writer.close()
    written = load_file(tmp_path / "head.safetensors")
    for name, tensor in zip(names, whole, strict=True):
        assert torch.equal(written[name], tensor), name
