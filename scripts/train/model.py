"""DeepSeek-V4.1 (text) in PyTorch, for training small presets on CPU and as a second,
independent reference of the runtime. Written from the official inference/model.py and
inference/engram.py (spec deepseek-v41-model.md), batched over whole sequences from
position 0 (prefill semantics, spec §6.1), in fp32 on exact weight values.

Parameter names are the checkpoint's tensor names (state_dict() keys), so export and load
are name-for-name. Mechanisms, in order of the forward pass:
  - Engram (at engram_layer_ids, before the block): hashed n-gram rows → wkv → one key per
    stream and a shared value; gate σ(ssqrt(⟨h, q⊙k⊙key⟩ / (rms(h)·rms(key)·√d))).
  - Lagged mHC: each sub-layer's hc mixes give post/comb for itself and the pre-mix of the
    next sub-layer; the first attention collapses onto stream 0, the head uses the last
    FFN's pre-mix. comb is made doubly stochastic by Sinkhorn.
  - CSA2 attention: a sliding window of raw KV plus the compressed KV of the layer's kv
    source (softmax-pooled groups of `ratio`, no overlap, no APE), at the positions the
    index source's indexer selects (top-k of ReLU'd multi-head scores; the candidate source
    also keeps its best blocks, the newest pinned, and later index sources score only in
    that pool). Selection ties go to the lower position, as in the runtime.
  - MoE: sqrtsoftplus scores, noaux_tc bias for the choice only, normalised top-k weights
    × routed_scaling_factor, plus the shared expert; SwiGLU with the swiglu_limit clamps.

Top-k choices are not differentiable. The indexer learns from an auxiliary KL loss towards
the main attention's distribution over all visible compressed entries (DeepSeek-V3.2's
indexer warm-up objective), on detached inputs; the expert bias follows the auxiliary-loss-
free balancing rule outside autograd (update_expert_bias).

Quantisation-aware training: with `fake_quant` on, FP8 weights (32×32 blocks, E8M0
scales), FP4 experts (1×32, E8M0) and FP8 Engram rows are rounded in the forward pass with
a straight-through gradient, so the exported released-format weights are the ones trained.
"""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

E4M3_MAX, E2M1_MAX = 448.0, 6.0


# ---------------------------------------------------------------------------------------
# Straight-through fake quantisation (the same roundings as formats.py, in torch).
def _pow2_ceil(x):
    """The smallest power of two ≥ x (x > 0), exactly."""
    mant, exp = torch.frexp(x)
    return torch.ldexp(torch.ones_like(x), torch.where(mant == 0.5, exp - 1, exp))


def _round_minifloat(x, mantissa_bits, min_exp, qmax):
    """Rounds x to the nearest value of a minifloat with `mantissa_bits` explicit mantissa
    bits and smallest normal exponent `min_exp`, ties to even (torch.round), saturating at
    ±qmax: E4M3 is (3, −6, 448), E2M1 is (1, 0, 6). Arithmetic, not a table lookup, so it
    is cheap enough for every training step; formats.py's encoders give the same values."""
    mag = x.abs().clamp(max=qmax)
    exp = torch.floor(torch.log2(mag.clamp_min(2.0 ** min_exp))).clamp_min(min_exp)
    step = torch.exp2(exp - mantissa_bits)
    return (torch.round(mag / step) * step).clamp(max=qmax) * torch.sign(x)


def fake_fp8_blocks(w, block):
    rows, cols = w.shape
    pr, pc = -rows % block, -cols % block
    wp = F.pad(w.detach(), (0, pc, 0, pr)).abs()
    amax = wp.view((rows + pr) // block, block, (cols + pc) // block, block).amax(dim=(1, 3))
    scale = _pow2_ceil(amax.clamp_min(1e-30) / E4M3_MAX)
    scale = scale.repeat_interleave(block, 0).repeat_interleave(block, 1)[:rows, :cols]
    q = _round_minifloat(w.detach() / scale, 3, -6, E4M3_MAX) * scale
    return w + (q - w).detach()


def fake_rows_per_32(x, mantissa_bits, min_exp, qmax):
    """Round the last dim in blocks of 32, one power-of-two scale each (FP4 experts, FP8
    Engram rows)."""
    shape = x.shape
    xb = x.detach().reshape(*shape[:-1], shape[-1] // 32, 32)
    scale = _pow2_ceil(xb.abs().amax(-1, keepdim=True).clamp_min(1e-30) / qmax)
    q = (_round_minifloat(xb / scale, mantissa_bits, min_exp, qmax) * scale).reshape(shape)
    return x + (q - x).detach()


# ---------------------------------------------------------------------------------------
class RMSNorm(nn.Module):
    def __init__(self, dim, eps):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        return x * torch.rsqrt(x.square().mean(-1, keepdim=True) + self.eps) * self.weight


class Linear(nn.Module):
    """y = x Wᵀ; `fmt` is the released format: "fp8" (32×32 blocks), "fp4" or "bf16"."""

    def __init__(self, cfg, n_in, n_out, fmt="fp8", std=0.02):
        super().__init__()
        self.cfg, self.fmt = cfg, fmt
        self.weight = nn.Parameter(torch.randn(n_out, n_in) * std)

    def effective_weight(self):
        if not self.cfg.fake_quant:
            return self.weight
        if self.fmt == "fp8":
            return fake_fp8_blocks(self.weight, self.cfg.block)
        if self.fmt == "fp4":
            return fake_rows_per_32(self.weight, 1, 0, E2M1_MAX)
        return self.weight

    def forward(self, x):
        return F.linear(x, self.effective_weight())


class Config:
    """The text_config keys this model reads, plus training switches."""

    def __init__(self, t):
        self.t = t
        self.V, self.d = t["vocab_size"], t["hidden_size"]
        self.L, self.n = t["num_hidden_layers"], t["hc_mult"]
        self.H, self.D, self.r = t["num_attention_heads"], t["head_dim"], t["qk_rope_head_dim"]
        self.Q, self.G, self.R = t["q_lora_rank"], t["o_groups"], t["o_lora_rank"]
        self.E, self.k, self.F = t["n_routed_experts"], t["num_experts_per_tok"], t["moe_intermediate_size"]
        self.eps, self.hc_eps, self.iters = t["rms_norm_eps"], t["hc_eps"], t["hc_sinkhorn_iters"]
        self.window, self.ratios = t["sliding_window"], t["compress_ratios"]
        self.kv_sources, self.index_sources = t["kv_source_layer_ids"], t["index_source_layer_ids"]
        self.cand_source = t.get("candidate_source_layer_id", -1)
        self.cand_blocks, self.cand_bs = t.get("candidate_topk_blocks", 0), t.get("candidate_block_size", 0)
        self.HI, self.DI, self.topk = t["index_n_heads"], t["index_head_dim"], t["index_topk"]
        self.limit, self.route_scale = t["swiglu_limit"], t["routed_scaling_factor"]
        self.engram_layers = t.get("engram_layer_ids", [])
        self.block = 32
        self.fake_quant = False

    def source_of(self, layer, sources):
        return max(s for s in sources if s <= layer)


def rope_freqs(r, base, factor, original, beta_fast, beta_slow, length):
    """cos, sin [length, r/2] as the official precompute_freqs_cis (YaRN when original>0)."""
    freqs = 1.0 / (base ** (torch.arange(0, r, 2, dtype=torch.float32) / r))
    if original > 0:
        def corrected(rot):
            return r * math.log(original / (rot * 2 * math.pi)) / (2 * math.log(base))
        low = max(math.floor(corrected(beta_fast)), 0)
        high = min(math.ceil(corrected(beta_slow)), r - 1)
        ramp = ((torch.arange(r // 2, dtype=torch.float32) - low) / max(high - low, 1e-3)).clamp(0, 1)
        freqs = freqs / factor * ramp + freqs * (1 - ramp)
    angles = torch.outer(torch.arange(length, dtype=torch.float32), freqs)
    return torch.cos(angles), torch.sin(angles)


def rope(x, cos, sin, inverse=False):
    """Rotates interleaved pairs of x's last dim; cos/sin broadcast [.., T, .., r/2]."""
    a, b = x[..., 0::2], x[..., 1::2]
    s = -sin if inverse else sin
    return torch.stack([a * cos - b * s, a * s + b * cos], dim=-1).flatten(-2)


# When a list, every top-k choice appends its smallest relative gap between the last score
# kept and the first dropped (reference.py: a choice within fp32 rounding of a tie may go
# either way in another implementation). Equal zeros (ReLU'd index scores) are exact ties
# that every implementation breaks the same way, to the lower index, so they do not count.
topk_margins = None


def stable_topk_mask(score, k):
    """Bool mask of the top min(k, #finite) entries of score's last dim, ties to the lower
    index (torch.topk's tie order is unspecified)."""
    ranked = torch.sort(score, dim=-1, descending=True, stable=True)
    order = ranked.indices[..., :k]
    if topk_margins is not None and score.shape[-1] > k:
        kept, dropped = ranked.values[..., k - 1], ranked.values[..., k]
        real = torch.isfinite(dropped) & ~((kept == 0) & (dropped == 0))
        gap = (kept - dropped)[real] / kept.abs()[real].clamp_min(1e-30)
        if gap.numel():
            topk_margins.append(gap.min().item())
    keep = torch.gather(score, -1, order) > -math.inf
    return torch.zeros_like(score, dtype=torch.bool).scatter(-1, order, keep)


# ---------------------------------------------------------------------------------------
class Compressor(nn.Module):
    def __init__(self, cfg, ratio):
        super().__init__()
        self.ratio = ratio
        self.wkv = Linear(cfg, cfg.d, cfg.D, "bf16")
        if ratio > 1:
            self.wgate = Linear(cfg, cfg.d, cfg.D, "bf16")
        self.norm = RMSNorm(cfg.D, cfg.eps)

    def forward(self, x):
        """x [B, T, d] → latents [B, T//ratio, D] (before RoPE), one per complete group."""
        B, T, _ = x.shape
        m, groups = self.ratio, T // self.ratio
        kv = self.wkv(x[:, :groups * m])
        if m > 1:
            score = self.wgate(x[:, :groups * m]).view(B, groups, m, -1)
            kv = (kv.view(B, groups, m, -1) * score.softmax(dim=2)).sum(dim=2)
        return self.norm(kv)


class Indexer(nn.Module):
    def __init__(self, cfg, owns_keys):
        super().__init__()
        self.cfg = cfg
        self.wq_b = Linear(cfg, cfg.Q, cfg.HI * cfg.DI, "fp8")
        self.weights_proj = Linear(cfg, cfg.d, cfg.HI, "bf16")
        if owns_keys:
            self.wk = Linear(cfg, cfg.D, cfg.DI, "bf16")
            self.k_norm = RMSNorm(cfg.DI, cfg.eps)

    def keys(self, latent, cos, sin, ratio):
        k = self.k_norm(self.wk(latent))
        nc = k.shape[1]
        c, s = cos[0:nc * ratio:ratio], sin[0:nc * ratio:ratio]
        return torch.cat([k[..., :-self.cfg.r], rope(k[..., -self.cfg.r:], c, s)], dim=-1)

    def scores(self, x, qr, keys, cos, sin):
        """[B, T, Nc] ReLU'd head scores weighted by weights_proj (before visibility)."""
        cfg = self.cfg
        B, T, _ = x.shape
        q = self.wq_b(qr).view(B, T, cfg.HI, cfg.DI)
        q = torch.cat([q[..., :-cfg.r], rope(q[..., -cfg.r:], cos[:T, None], sin[:T, None])], -1)
        w = self.weights_proj(x) * (cfg.DI ** -0.5 * cfg.HI ** -0.5)
        dots = torch.einsum("bthi,bni->bthn", q, keys).relu()
        return (dots * w.unsqueeze(-1)).sum(dim=2)


class Attention(nn.Module):
    def __init__(self, cfg, layer):
        super().__init__()
        self.cfg, self.layer = cfg, layer
        self.ratio = cfg.ratios[layer]
        self.attn_sink = nn.Parameter(torch.zeros(cfg.H))
        self.wq_a = Linear(cfg, cfg.d, cfg.Q)
        self.q_norm = RMSNorm(cfg.Q, cfg.eps)
        self.wq_b = Linear(cfg, cfg.Q, cfg.H * cfg.D)
        self.wkv = Linear(cfg, cfg.d, cfg.D)
        self.kv_norm = RMSNorm(cfg.D, cfg.eps)
        self.wo_a = Linear(cfg, cfg.H * cfg.D // cfg.G, cfg.G * cfg.R)
        self.wo_b = Linear(cfg, cfg.G * cfg.R, cfg.d, std=0.02 / math.sqrt(2 * cfg.L))
        self.is_kv_source = layer in cfg.kv_sources
        self.is_index_source = layer in cfg.index_sources
        if self.is_kv_source:
            self.compressor = Compressor(cfg, self.ratio)
        if self.is_index_source:
            self.indexer = Indexer(cfg, self.is_kv_source)
        t = cfg.t
        if self.ratio:
            ys = t["rope_scaling"]
            self.rope_args = (cfg.r, t["compress_rope_theta"], ys["factor"],
                              ys["original_max_position_embeddings"], ys["beta_fast"], ys["beta_slow"])
        else:
            self.rope_args = (cfg.r, t["rope_theta"], 1, 0, 1, 1)

    def select(self, x, qr, shared, cos, sin, aux):
        """The compressed positions each query attends to: [B, T, Nc] bool."""
        cfg, m = self.cfg, self.ratio
        B, T, _ = x.shape
        src = cfg.source_of(self.layer, cfg.kv_sources)
        keys = shared["keys"][src]
        nc = keys.shape[1]
        visible = torch.arange(nc) < (torch.arange(1, T + 1) // m).unsqueeze(-1)  # [T, Nc]
        with torch.no_grad():
            score = self.indexer.scores(x, qr, keys, cos, sin).masked_fill(~visible, -math.inf)
            if self.layer == cfg.cand_source:
                shared["pool"] = self.candidate_pool(score, visible)
            elif 0 <= cfg.cand_source < self.layer:
                score = score.masked_fill(~shared["pool"], -math.inf)
            selected = stable_topk_mask(score, cfg.topk)
        if aux is not None:
            # the indexer learns to rank like the attention it serves (detached inputs)
            q_score = self.indexer.scores(x.detach(), qr.detach(), shared["keys_train"][src], cos, sin)
            aux.append((q_score, visible))
        return selected

    def candidate_pool(self, score, visible):
        cfg = self.cfg
        B, T, nc = score.shape
        bs = cfg.cand_bs
        nb = -(-nc // bs)
        blocks = F.pad(score, (0, nb * bs - nc), value=-math.inf).view(B, T, nb, bs).amax(-1)
        n_vis = visible.sum(-1)  # [T]
        last = (n_vis - 1).div(bs, rounding_mode="floor")
        pinned = torch.arange(nb) == last.unsqueeze(-1)  # [T, nb]; none while nothing is visible
        keep = stable_topk_mask(blocks.masked_fill(pinned, -math.inf), cfg.cand_blocks - 1)
        keep = keep | (pinned & (n_vis > 0).unsqueeze(-1))
        return keep.repeat_interleave(bs, dim=-1)[..., :nc] & visible

    def forward(self, x, shared, aux):
        cfg = self.cfg
        B, T, _ = x.shape
        cos, sin = rope_freqs(*self.rope_args, T)
        qr = self.q_norm(self.wq_a(x))
        q = self.wq_b(qr).view(B, T, cfg.H, cfg.D)
        q = torch.cat([q[..., :-cfg.r], rope(q[..., -cfg.r:], cos[:, None], sin[:, None])], -1)
        kv = self.kv_norm(self.wkv(x))
        kv = torch.cat([kv[..., :-cfg.r], rope(kv[..., -cfg.r:], cos, sin)], -1)

        pos = torch.arange(T)
        window = (pos[None, :] <= pos[:, None]) & (pos[None, :] > pos[:, None] - cfg.window)
        logits = torch.einsum("bthd,bsd->bhts", q, kv) / math.sqrt(cfg.D)
        logits = logits.masked_fill(~window, -math.inf)
        values = [kv]
        if self.ratio:
            if self.is_kv_source:
                latent = self.compressor(x)
                shared["keys"][self.layer] = self.indexer.keys(latent.detach(), cos, sin, self.ratio)
                if aux is not None:
                    shared["keys_train"][self.layer] = shared["keys"][self.layer]
                    shared["keys"][self.layer] = shared["keys"][self.layer].detach()
                nc = latent.shape[1]
                c, s = cos[0:nc * self.ratio:self.ratio], sin[0:nc * self.ratio:self.ratio]
                shared["entries"][self.layer] = torch.cat(
                    [latent[..., :-cfg.r], rope(latent[..., -cfg.r:], c, s)], -1)
            if self.is_index_source:
                shared["selection"] = self.select(x, qr, shared, cos, sin, aux)
            entries = shared["entries"][cfg.source_of(self.layer, cfg.kv_sources)]
            c_logits = torch.einsum("bthd,bnd->bhtn", q, entries) / math.sqrt(cfg.D)
            if aux is not None and self.is_index_source:
                # target of the indexer loss: this attention over every visible entry
                q_score, visible = aux[-1]
                aux[-1] = (q_score, visible, c_logits.detach())
            logits = torch.cat([logits, c_logits.masked_fill(~shared["selection"][:, None], -math.inf)], -1)
            values.append(entries)
        sink = self.attn_sink.view(1, -1, 1, 1).expand(B, cfg.H, T, 1)
        p = torch.cat([logits, sink], -1).softmax(-1)[..., :-1]
        o = torch.einsum("bhts,bsd->bthd", p, torch.cat(values, 1))
        o = torch.cat([o[..., :-cfg.r], rope(o[..., -cfg.r:], cos[:, None], sin[:, None], True)], -1)
        o = o.reshape(B, T, cfg.G, cfg.H * cfg.D // cfg.G)
        wo_a = self.wo_a.effective_weight().view(cfg.G, cfg.R, -1)
        return self.wo_b(torch.einsum("btgi,gri->btgr", o, wo_a).flatten(2))


class Expert(nn.Module):
    def __init__(self, cfg, fmt):
        super().__init__()
        self.cfg = cfg
        self.w1 = Linear(cfg, cfg.d, cfg.F, fmt)
        self.w2 = Linear(cfg, cfg.F, cfg.d, fmt, std=0.02 / math.sqrt(2 * cfg.L))
        self.w3 = Linear(cfg, cfg.d, cfg.F, fmt)

    def forward(self, x, weight=None):
        gate, up = self.w1(x), self.w3(x)
        if self.cfg.limit > 0:
            up = up.clamp(-self.cfg.limit, self.cfg.limit)
            gate = gate.clamp(max=self.cfg.limit)
        h = F.silu(gate) * up
        return self.w2(h if weight is None else h * weight)


class Gate(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(cfg.E, cfg.d) * 0.02)
        self.register_buffer("bias", torch.zeros(cfg.E))


class MoE(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        self.gate = Gate(cfg)
        self.experts = nn.ModuleList([Expert(cfg, "fp4") for _ in range(cfg.E)])
        self.shared_experts = Expert(cfg, "fp8")

    def forward(self, x, loads):
        cfg = self.cfg
        shape = x.shape
        x = x.reshape(-1, cfg.d)
        scores = F.softplus(F.linear(x, self.gate.weight)).sqrt()
        choice = stable_topk_mask(scores.detach() + self.gate.bias, cfg.k)  # bias picks only
        w = scores * choice
        w = w / (w.sum(-1, keepdim=True) + 1e-20) * cfg.route_scale
        loads.append(choice.sum(0))
        y = self.shared_experts(x)
        for e in range(cfg.E):
            rows = choice[:, e].nonzero().squeeze(-1)
            if rows.numel():
                y = y.index_add(0, rows, self.experts[e](x[rows], w[rows, e, None]))
        return y.view(shape)


class EngramTable(nn.Module):
    def __init__(self, rows, dim):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(rows, dim))


class Engram(nn.Module):
    def __init__(self, cfg, rows):
        super().__init__()
        t = cfg.t
        self.cfg = cfg
        cols = (t["engram_max_ngram_size"] - 1) * t["engram_n_heads"]
        self.embed = EngramTable(rows, t["engram_head_dim"])
        self.wkv = Linear(cfg, cols * t["engram_head_dim"], (cfg.n + 1) * cfg.d)
        self.q_weight = nn.Parameter(torch.ones(cfg.n, cfg.d))
        self.k_weight = nn.Parameter(torch.ones(cfg.n, cfg.d))

    def forward(self, h, rows):
        cfg = self.cfg
        e = F.embedding(rows, self.embed.weight)
        if cfg.fake_quant:
            e = fake_rows_per_32(e, 3, -6, E4M3_MAX)
        kv = self.wkv(e.flatten(-2))
        key = kv[..., :cfg.n * cfg.d].unflatten(-1, (cfg.n, cfg.d))
        value = kv[..., cfg.n * cfg.d:]
        rstd = torch.rsqrt(h.square().mean(-1) + cfg.eps) * torch.rsqrt(key.square().mean(-1) + cfg.eps)
        dot = (h * (self.q_weight * self.k_weight) * key).sum(-1) * rstd * cfg.d ** -0.5
        gate = torch.sigmoid(torch.copysign(dot.abs().clamp_min(1e-6).sqrt(), dot))
        return h + gate.unsqueeze(-1) * value.unsqueeze(-2)


class Block(nn.Module):
    def __init__(self, cfg, layer, engram_rows=None):
        super().__init__()
        self.cfg = cfg
        n, mix = cfg.n, (2 + cfg.n) * cfg.n
        if engram_rows is not None:
            self.engram = Engram(cfg, engram_rows)
        for sub in ("attn", "ffn"):
            setattr(self, f"hc_{sub}_fn", nn.Parameter(torch.randn(mix, n * cfg.d) * 1e-3))
            setattr(self, f"hc_{sub}_base", nn.Parameter(torch.zeros(mix)))
            setattr(self, f"hc_{sub}_scale", nn.Parameter(torch.ones(3)))
        self.attn_norm = RMSNorm(cfg.d, cfg.eps)
        self.ffn_norm = RMSNorm(cfg.d, cfg.eps)
        self.attn = Attention(cfg, layer)
        self.ffn = MoE(cfg)

    def mixes(self, h, sub):
        """pre [.., n], post [.., n], comb [.., n, n] (comb[a, b]: stream a into b)."""
        cfg, n = self.cfg, self.cfg.n
        fn, base, scale = (getattr(self, f"hc_{sub}_{k}") for k in ("fn", "base", "scale"))
        x = h.flatten(-2)
        mix = F.linear(x, fn) * torch.rsqrt(x.square().mean(-1, keepdim=True) + cfg.eps)
        pre = torch.sigmoid(mix[..., :n] * scale[0] + base[:n]) + cfg.hc_eps
        post = 2 * torch.sigmoid(mix[..., n:2 * n] * scale[1] + base[n:2 * n])
        comb = (mix[..., 2 * n:] * scale[2] + base[2 * n:]).unflatten(-1, (n, n))
        comb = comb.softmax(-1) + cfg.hc_eps
        comb = comb / (comb.sum(-2, keepdim=True) + cfg.hc_eps)
        for _ in range(cfg.iters - 1):
            comb = comb / (comb.sum(-1, keepdim=True) + cfg.hc_eps)
            comb = comb / (comb.sum(-2, keepdim=True) + cfg.hc_eps)
        return pre, post, comb

    @staticmethod
    def collapse(h, pre):
        return (pre.unsqueeze(-1) * h).sum(-2)

    @staticmethod
    def expand(f, h, post, comb):
        return post.unsqueeze(-1) * f.unsqueeze(-2) + torch.einsum("btij,btid->btjd", comb, h)

    def forward(self, h, pre_mix, shared, loads, aux):
        attn_pre, attn_post, attn_comb = self.mixes(h, "attn")
        a = self.attn(self.attn_norm(self.collapse(h, pre_mix)), shared, aux)
        h = self.expand(a, h, attn_post, attn_comb)
        ffn_pre, ffn_post, ffn_comb = self.mixes(h, "ffn")
        f = self.ffn(self.ffn_norm(self.collapse(h, attn_pre)), loads)
        return self.expand(f, h, ffn_post, ffn_comb), ffn_pre


class Transformer(nn.Module):
    def __init__(self, text_config):
        super().__init__()
        cfg = self.cfg = Config(text_config)
        self.embed = nn.Embedding(cfg.V, cfg.d)
        nn.init.normal_(self.embed.weight, std=1.0)
        rows = dict(zip(cfg.engram_layers, text_config.get("engram_num_embeddings", [])))
        self.layers = nn.ModuleList([Block(cfg, l, rows.get(l)) for l in range(cfg.L)])
        self.norm = RMSNorm(cfg.d, cfg.eps)
        self.head = nn.Linear(cfg.d, cfg.V, bias=False)
        nn.init.normal_(self.head.weight, std=0.02)

    def forward(self, tokens, engram_rows, aux=None):
        """tokens [B, T] from position 0; engram_rows: [B, T, cols] per Engram layer.
        Returns (logits [B, T, V], expert loads [layers][E])."""
        cfg = self.cfg
        h = self.embed(tokens).unsqueeze(2).repeat(1, 1, cfg.n, 1)
        pre = torch.zeros(*tokens.shape, cfg.n)
        pre[..., 0] = 1.0  # layer 0's attention reads stream 0
        shared = {"keys": {}, "entries": {}, "keys_train": {}}
        loads = []
        for i, block in enumerate(self.layers):
            if i in cfg.engram_layers:
                h = block.engram(h, engram_rows[cfg.engram_layers.index(i)])
            h, pre = block(h, pre, shared, loads, aux)
        return self.head(self.norm(Block.collapse(h, pre))), loads

    @torch.no_grad()
    def update_expert_bias(self, loads, rate):
        """Auxiliary-loss-free balancing: raise the bias of under-loaded experts, lower it
        for over-loaded ones."""
        for block, load in zip(self.layers, loads):
            load = load.float()
            block.ffn.gate.bias += rate * torch.sign(load.mean() - load)


def indexer_loss(aux):
    """KL(attention ‖ indexer) over the visible compressed entries, averaged over queries
    that see any; the attention target sums its heads' probabilities."""
    total, count = 0.0, 0
    for q_score, visible, c_logits in aux:
        rows = visible.any(-1)
        if not rows.any():
            continue
        target = c_logits.masked_fill(~visible, -math.inf).softmax(-1).mean(1)  # [B, T, Nc]
        logp = q_score.masked_fill(~visible, -math.inf).log_softmax(-1)
        kl = (target * (target.clamp_min(1e-12).log() - logp.masked_fill(~visible, 0))).sum(-1)
        total = total + kl[:, rows].mean()
        count += 1
    return total / max(count, 1)
