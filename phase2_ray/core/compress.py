"""SemanticCompressor: post-training int8 compression of a trained GPT, multiplied by int8 kernels. Pure PyTorch.

Every matrix (attention, MLP and the tied embedding / LM head) becomes int8 with one fp32 scale per output row
(symmetric, scale = max|w| / 127). LayerNorms and the position table stay fp32 (they are tiny). No fp32 copy of
a matrix exists after compression, neither kept nor made per call: each linear runs one of two int8 kernels that
PyTorch ships, chosen by measurement where the model loads (`choose_kernel`):

- `int8pack`: `aten._weight_int8pack_mm`, weight-only int8 (activations stay fp32). It reads the int8 matrix as it
  is; ATen vectorizes it for AVX-512 (and CUDA), and falls back to a slow loop elsewhere.
- `fbgemm`: `fbgemm_linear_int8_weight_fp32_activation`, FBGEMM's int8 GEMM (x86, AVX2 and up): activations are
  quantized per call (per tensor, uint8), multiplied with the packed int8 matrix, and the row scales applied after.
  Its packed matrix pads the input dimension to FBGEMM's block (512 on AVX2), so for narrow layers it holds more
  bytes than the fp32 matrix did; it is only eligible where it does not (`eligible`).

Why not torch.ao dynamic quantization (`quantized::linear_dynamic`): deprecated in torch 2.13, and slower per call
than both at this model's sizes; nor torch.compile's weight-only pattern: on CPU it lowers to `int8pack` too, or
materializes the fp32 matrix per call (benchmarks/RESULTS.md has the measurements)."""

from __future__ import annotations

import ctypes
import statistics
import time
import warnings
from collections import Counter
from collections.abc import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from phase2_ray.core.model import GPT, MLP, Block, CausalLM, CausalSelfAttention, GPTConfig

KERNELS = ("fbgemm", "int8pack")

# The fbgemm ops warn once that they are deprecated; they are still PyTorch's int8 GEMM for x86 (torch.ao's
# dynamic linear calls the same library) and the warning says nothing a user can act on.
warnings.filterwarnings("ignore", message=r"fbgemm_\w+ is deprecated")


def quantize_rows(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-row int8: returns (int8 weights, fp32 scale per row)."""
    w = w.detach().float()
    scale = w.abs().amax(dim=1).clamp(min=1e-12) / 127.0
    q = torch.round(w / scale[:, None]).clamp(-127, 127).to(torch.int8)
    return q, scale


def fbgemm_available() -> bool:
    return (
        "fbgemm" in torch.backends.quantized.supported_engines
        and torch.backends.cpu.get_cpu_capability()
        in (
            "AVX2",
            "AVX512",
        )
    )


class _Malloc:
    """glibc's count of bytes allocated by this process (`mallinfo2`): how the opaque FBGEMM pack is sized."""

    class _Info(ctypes.Structure):
        _fields_ = [
            (n, ctypes.c_size_t)
            for n in "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split()
        ]

    def __init__(self) -> None:
        try:
            self.libc = ctypes.CDLL("libc.so.6")
            self.libc.mallinfo2.restype = self._Info
        except (OSError, AttributeError):
            self.libc = None

    def used(self) -> int | None:
        if self.libc is None:
            return None
        m = self.libc.mallinfo2()
        return m.uordblks + m.hblkhd


_MALLOC = _Malloc()


def _fbgemm_pack(q: torch.Tensor) -> tuple[torch.Tensor, int]:
    """FBGEMM's packed copy of an int8 matrix and its size in bytes as the allocator saw it (the tensor holding it
    is an opaque handle). Without glibc the size falls back to FBGEMM's AVX2 layout, 512-row input blocks."""
    before = _MALLOC.used()
    packed = torch.fbgemm_pack_quantized_matrix(q)
    after = _MALLOC.used()
    n, k = q.shape
    floor = -(-k // 512) * 512 * n
    return packed, (after - before) if before is not None and after - before > 0 else floor


class Int8Linear(nn.Module):
    """y = (x @ q^T) * scale, by an int8 kernel. `matmul` is the bare function the decode step calls (a module
    call costs more than the multiply itself at this model's sizes)."""

    def __init__(
        self, q: torch.Tensor, scale: torch.Tensor, kernel: str, bias: torch.Tensor | None = None
    ) -> None:
        super().__init__()
        if kernel not in KERNELS:
            raise ValueError(f"unknown int8 kernel {kernel!r}: one of {KERNELS}")
        self.kernel, (self.out_features, self.in_features) = kernel, q.shape
        self.register_buffer("scale", scale)
        # fp32, added after the scale (a GPT-2 checkpoint's; ours have none)
        self.register_buffer("bias", bias)
        self.packed_bytes = 0
        if kernel == "int8pack":
            self.register_buffer("weight", q)
        else:
            if q.device.type != "cpu":
                raise ValueError("int8 kernel fbgemm runs on the CPU only")
            self._packed, self.packed_bytes = _fbgemm_pack(q)
            # FBGEMM adds activation zero-point corrections from each row's sum; the scales apply after (per row,
            # which its scalar weight scale cannot express).
            self.register_buffer("col_offsets", q.sum(dim=1, dtype=torch.int32))
            self.register_buffer("zero_bias", torch.zeros(q.shape[0]))
        self._bind()

    def _bind(self) -> None:
        """Builds `matmul` over the current tensors (again after a move: the closure holds them)."""
        n, k = self.out_features, self.in_features
        scale, b = self.scale, self.bias
        if self.kernel == "int8pack":
            op, q = torch.ops.aten._weight_int8pack_mm, self.weight

            def matmul(x: torch.Tensor) -> torch.Tensor:
                y = op(x, q, scale) if x.dim() == 2 else op(x.reshape(-1, k), q, scale).view(*x.shape[:-1], n)
                return y if b is None else y.add_(b)

        else:
            # FBGEMM reads only the shape of its `weight` argument: a zero-stride view stands in for the matrix.
            args = (torch.empty((), dtype=torch.int8).expand(n, k), self._packed, self.col_offsets, 1.0, 0)
            op, bias = torch.fbgemm_linear_int8_weight_fp32_activation, self.zero_bias

            def matmul(x: torch.Tensor) -> torch.Tensor:
                y = op(x, *args, bias).mul_(scale)
                return y if b is None else y.add_(b)

        self.matmul: Callable[[torch.Tensor], torch.Tensor] = matmul

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.matmul(x)

    def _apply(self, fn, recurse=True):
        out = super()._apply(fn, recurse)
        if self.kernel == "fbgemm" and self.scale.device.type != "cpu":
            raise ValueError("int8 kernel fbgemm runs on the CPU only: compress the model on its device")
        self._bind()
        return out


class Int8Embedding(nn.Module):
    """Row lookup of int8 weights, scaled back per row (only the looked-up rows become fp32)."""

    def __init__(self, q: torch.Tensor, scale: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("weight", q)
        self.register_buffer("scale", scale)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return F.embedding(ids, self.weight).float().mul_(self.scale[ids].unsqueeze(-1))


def _linear_shapes(cfg: GPTConfig) -> list[tuple[int, int]]:
    d, hd, f = cfg.d_model, cfg.head_dim, cfg.hidden
    if cfg.arch == "llama":
        per_block = [((cfg.n_head + 2 * cfg.kv_heads) * hd, d), (d, cfg.n_head * hd), (2 * f, d), (d, f)]
    else:
        per_block = [(3 * d, d), (d, d), (f, d), (d, f)]
    return per_block * cfg.n_layer + [(cfg.vocab_size, d)]


def probe_kernels(cfg: GPTConfig, rounds: int = 5, calls: int = 20) -> dict[str, dict]:
    """Each available kernel's time for one decode step's matrices at batch 1 (the single stream), on random int8
    weights of this model's shapes, rounds interleaved; and the bytes it would hold against the fp32 matrices'.
    One layer per distinct shape, weighted by how often the model has it: the probe's own memory stays small."""
    counts = Counter(_linear_shapes(cfg))
    kernels = [k for k in KERNELS if k != "fbgemm" or fbgemm_available()]
    fp32_bytes = sum(c * 4 * n * k for (n, k), c in counts.items())
    g = torch.Generator().manual_seed(0)
    weights = {shape: quantize_rows(torch.randn(shape, generator=g)) for shape in counts}
    mods = {k: {shape: Int8Linear(*w, k) for shape, w in weights.items()} for k in kernels}
    xs = {shape: torch.randn(1, shape[1], generator=g) for shape in counts}
    times: dict[str, list[float]] = {k: [] for k in kernels}
    with torch.inference_mode():
        for _ in range(rounds):
            for k in kernels:
                step = 0.0
                for shape, c in counts.items():
                    fn, x = mods[k][shape].matmul, xs[shape]
                    t0 = time.perf_counter()
                    for _ in range(calls):
                        fn(x)
                    step += c * (time.perf_counter() - t0) / calls
                times[k].append(step * 1e6)
    out = {}
    for k in kernels:
        b = sum(c * weight_bytes(mods[k][shape]) for shape, c in counts.items())
        # The tied matrix is held once by int8pack (embedding and head share it); FBGEMM's head is a packed copy
        # beside the embedding's own int8 rows.
        b += cfg.vocab_size * cfg.d_model if k == "fbgemm" or not cfg.tie_embeddings else 0
        out[k] = {"step_matmul_us": statistics.median(times[k]), "bytes": b, "fp32_bytes": fp32_bytes}
    return out


def choose_kernel(cfg: GPTConfig, device: str = "cpu", requested: str = "auto") -> tuple[str, dict]:
    """The int8 kernel for this model here, and why: `requested` if not "auto"; on a GPU `int8pack`; on a CPU the
    fastest measured kernel among those whose matrices take no more bytes than the fp32 ones did (int8 that grows
    the model is no compression)."""
    if requested != "auto":
        if requested == "fbgemm" and (device != "cpu" or not fbgemm_available()):
            raise ValueError(f"int8 kernel fbgemm needs an x86 CPU with AVX2 (device {device!r})")
        return requested, {"requested": requested}
    if device != "cpu":
        return "int8pack", {"requested": "auto", "reason": f"the only int8 kernel for {device}"}
    probe = probe_kernels(cfg)
    eligible = {k: p for k, p in probe.items() if p["bytes"] <= p["fp32_bytes"]} or probe
    chosen = min(eligible, key=lambda k: eligible[k]["step_matmul_us"])
    return chosen, {"requested": "auto", "probe": probe, "eligible": sorted(eligible)}


def _bare(cls: type[nn.Module], **children) -> nn.Module:
    """A `cls` holding exactly `children`, its __init__ skipped: the int8 model is assembled from int8 layers
    without first building the fp32 one (nor a meta-device one: the first meta tensor imports ~70 MB of torch
    into a replica). tests/unit/test_compress.py checks it has every attribute and module the class builds."""
    m = cls.__new__(cls)
    nn.Module.__init__(m)
    for name, value in children.items():
        setattr(m, name, value)
    return m


class SemanticCompressor:
    """Turns a trained GPT's weights into its int8 copy (the source is left untouched)."""

    method = "int8 weights, symmetric per output row"

    def __init__(self, kernel: str = "auto", device: str = "cpu") -> None:
        self.requested, self.device = kernel, device
        self.kernel: str | None = None
        self.choice: dict = {}

    def compress(self, model: CausalLM) -> CausalLM:
        return self.compress_state(model.state_dict(), model.cfg)

    def compress_state(self, state: dict[str, torch.Tensor], cfg: GPTConfig) -> CausalLM:
        """The int8 model straight from a (fp32) state dict: no fp32 model is built, and each matrix is quantized
        from its tensor in `state` (the only fp32 copy, the caller's)."""
        if self.kernel is None:
            self.kernel, self.choice = choose_kernel(cfg, self.device, self.requested)
        dev = torch.device(self.device)

        def lin(name: str) -> Int8Linear:
            q, s = quantize_rows(state[name + ".weight"].to(dev))
            b = state.get(name + ".bias")
            return Int8Linear(q, s, self.kernel, None if b is None else b.float().to(dev))

        def norm(prefix: str) -> nn.LayerNorm:
            ln = nn.LayerNorm(cfg.d_model, device=dev)
            ln.weight.data, ln.bias.data = state[prefix + ".weight"].to(dev), state[prefix + ".bias"].to(dev)
            return ln

        if cfg.arch == "llama":
            return self._llama(state, cfg, lin, dev)
        blocks = []
        for i in range(cfg.n_layer):
            p = f"blocks.{i}."
            attn = _bare(
                CausalSelfAttention,
                n_head=cfg.n_head,
                dropout=cfg.dropout,
                qkv=lin(p + "attn.qkv"),
                proj=lin(p + "attn.proj"),
            )
            mlp = _bare(
                MLP,
                fc=lin(p + "mlp.fc"),
                proj=lin(p + "mlp.proj"),
                drop=nn.Dropout(cfg.dropout),
            )
            blocks.append(_bare(Block, ln1=norm(p + "ln1"), attn=attn, ln2=norm(p + "ln2"), mlp=mlp))
        # The embedding and the LM head are one tied matrix: quantized once; the head's kernel shares or packs it.
        q, s = quantize_rows(state["wte.weight"].to(dev))
        out = _bare(
            GPT,
            cfg=cfg,
            wte=Int8Embedding(q, s),
            wpe=nn.Embedding.from_pretrained(state["wpe.weight"].to(dev)),
            blocks=nn.ModuleList(blocks),
            ln_f=norm("ln_f"),
            lm_head=Int8Linear(q, s, self.kernel),
        )
        return out.eval().requires_grad_(False)

    def _llama(self, state: dict[str, torch.Tensor], cfg: GPTConfig, lin, dev: torch.device) -> nn.Module:
        """The llama's int8 copy: the same layers as the GPT's, RMSNorms kept fp32, an untied head quantized on
        its own."""
        from phase2_ray.core.llama import GQAttention, Llama, LlamaBlock, SwiGLU

        def norm(name: str) -> nn.RMSNorm:
            n = nn.RMSNorm(cfg.d_model, eps=cfg.norm_eps, device=dev)
            n.weight.data = state[name + ".weight"].float().to(dev)
            return n

        blocks = []
        for i in range(cfg.n_layer):
            p = f"blocks.{i}."
            attn = _bare(
                GQAttention,
                n_head=cfg.n_head,
                kv_heads=cfg.kv_heads,
                hd=cfg.head_dim,
                qkv=lin(p + "attn.qkv"),
                proj=lin(p + "attn.proj"),
            )
            mlp = _bare(SwiGLU, fc=lin(p + "mlp.fc"), proj=lin(p + "mlp.proj"))
            blocks.append(_bare(LlamaBlock, ln1=norm(p + "ln1"), attn=attn, ln2=norm(p + "ln2"), mlp=mlp))
        q, s = quantize_rows(state["wte.weight"].to(dev))
        head = Int8Linear(q, s, self.kernel) if cfg.tie_embeddings else lin("lm_head")
        out = _bare(
            Llama,
            cfg=cfg,
            wte=Int8Embedding(q, s),
            blocks=nn.ModuleList(blocks),
            ln_f=norm("ln_f"),
            lm_head=head,
        )
        out.init_rope()
        return out.eval().requires_grad_(False)


def weight_bytes(model: nn.Module) -> int:
    """Bytes held by the model's weights: parameters and buffers (each shared storage once) plus any int8 kernel's
    packed matrices."""
    seen: set[int] = set()
    total = 0
    for t in [*model.parameters(), *model.buffers()]:
        ptr = t.untyped_storage().data_ptr()
        if ptr not in seen:
            seen.add(ptr)
            total += t.untyped_storage().nbytes()
    return total + sum(getattr(m, "packed_bytes", 0) for m in model.modules())


def load_for_serving(spec: dict, device: str = "cpu") -> tuple[CausalLM, dict, object]:
    """A served model id's (model, meta, tokenizer) from its spec: the checkpoint's files on `device`, passed
    through `spec["converters"]`' serve hooks in order (a copy such as `optimized-int8` is its source's checkpoint
    with the int8 converter). The Serve replica and the in-process reference both load through here, so they serve
    the same model; `meta["converters"]` says what ran, `meta["int8"]` which int8 kernel and why."""
    from phase2_ray.core.checkpoint import load_checkpoint, read_checkpoint  # checkpoint imports the model
    from phase2_ray.core.converters import ConverterStack

    convs = list(spec.get("converters") or [])
    if spec.get("int8"):  # a spec from before converters
        convs = [{"name": "int8", "use": "int8", "args": {"kernel": spec.get("int8_kernel", "auto")}}]
    if [c["name"] for c in convs] == ["int8"] and convs[0]["use"] == "int8":
        # The int8 copy alone: compressed straight from the checkpoint's tensors, no fp32 model built first.
        state, meta, tok = read_checkpoint(spec["checkpoint"])
        comp = SemanticCompressor(convs[0].get("args", {}).get("kernel", "auto"), device)
        model = comp.compress_state(state, GPTConfig(**meta["model"]))
        del state
        info = {"kernel": comp.kernel, "method": comp.method, **comp.choice}
        applied = [{"name": "int8", "args": convs[0].get("args", {}), "hooks": ["serve"], "info": info}]
        return model, {**meta, "int8": info, "converters": applied}, tok
    model, meta, tok = load_checkpoint(spec["checkpoint"])
    model = model.to(device)
    if not convs:
        return model, meta, tok
    stack = ConverterStack(convs)
    model = stack.serve(model)
    int8 = next((a.get("info") for a in stack.applied if a["name"] == "int8" and a.get("info")), None)
    return model, {**meta, "int8": int8, "converters": stack.applied}, tok
