"""Triton kernels for multi-tap (atrous) convolution: forward with fused epilogue, split-K
reduction, and weight gradient. Launch them through tap_conv_launch.py, which owns the
configurations, autotuning and the tap tables.

The forward kernel is an implicit GEMM. Its M dimension is a 2-D tile of BLOCK_H x BLOCK_W
output pixels of one image, N is output channels, and K runs over (tap, input channel): for tap
t, the A tile is the input shifted by the tap's offset (dy_t, dx_t), zero outside the map, and
the B tile is the tap's (Cin, Cout) weight slice. Two-dimensional pixel tiles let a tile skip a
tap outright when the tap's valid output rectangle misses the tile (for ASPP, rate 24 on a 65x65
map, the corner taps only touch output rows and columns [0, 41) or [24, 65)), which a row-major
1-D pixel tile could not do for the column direction.

Tensors are addressed through explicit strides, so NCHW, channels_last and other strided
inputs need no copy. Triton specialises integer arguments equal to 1 into constants, so the
unit stride of the layout actually passed becomes a compile-time constant and loads vectorise
along it.

Accumulation is always float32. DOT_PRECISION is "tf32" or "ieee" for float32 inputs (it
follows torch.backends.cudnn.allow_tf32) and ignored for 16-bit inputs.

Offsets inside one image are int32 (an image of < 2**31 elements); the image offset is int64.
"""
import triton
import triton.language as tl

# Columns of the per-tap int32 table (see taps.TAP_FIELDS); globals read inside @triton.jit
# functions must be constexpr.
_DY = tl.constexpr(0)
_DX = tl.constexpr(1)
_OH_LO = tl.constexpr(2)
_OH_HI = tl.constexpr(3)
_OW_LO = tl.constexpr(4)
_OW_HI = tl.constexpr(5)
_TAP_ROW = tl.constexpr(6)


@triton.jit
def _epilogue(acc, n, co, oh, ow, mask, co_mask,
              bias_ptr, scale_ptr, shift_ptr, res_ptr,
              sr_n, sr_c, sr_h, sr_w,
              HAS_BIAS: tl.constexpr, HAS_SCALE: tl.constexpr, HAS_SHIFT: tl.constexpr,
              HAS_RES: tl.constexpr, RELU: tl.constexpr):
    """y = relu(((acc + bias) * scale + shift) + residual), each step optional.

    `co` indexes output channels and broadcasts against the pixel indices `oh`, `ow`; the same
    helper serves the 2-D tiles of the forward kernel and the 1-D blocks of the reduction.
    """
    if HAS_BIAS:
        acc = acc + tl.load(bias_ptr + co, mask=co_mask, other=0.0).to(tl.float32)
    if HAS_SCALE:
        acc = acc * tl.load(scale_ptr + co, mask=co_mask, other=0.0).to(tl.float32)
    if HAS_SHIFT:
        acc = acc + tl.load(shift_ptr + co, mask=co_mask, other=0.0).to(tl.float32)
    if HAS_RES:
        r = tl.load(res_ptr + n * sr_n + co * sr_c + oh * sr_h + ow * sr_w, mask=mask, other=0.0)
        acc = acc + r.to(tl.float32)
    if RELU:
        acc = tl.maximum(acc, 0.0)
    return acc


@triton.jit
def tap_conv_fwd_kernel(
    x_ptr, w_ptr, taps_ptr, out_ptr, part_ptr,
    bias_ptr, scale_ptr, shift_ptr, res_ptr,
    C, H, W, CO, OH, OW, T,
    sx_n, sx_c, sx_h, sx_w,
    so_n, so_c, so_h, so_w,
    sr_n, sr_c, sr_h, sr_w,
    sp_s, sp_n,
    STRIDE_H, STRIDE_W,
    HAS_BIAS: tl.constexpr, HAS_SCALE: tl.constexpr, HAS_SHIFT: tl.constexpr,
    HAS_RES: tl.constexpr, RELU: tl.constexpr, DOT_PRECISION: tl.constexpr,
    BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    SPLIT_K: tl.constexpr,
):
    """out[n, co, oh, ow] = epilogue(sum_t sum_c w[t, c, co] * x[n, c, oh*SH + dy_t, ow*SW + dx_t]).

    Grid: (N * tiles_h * tiles_w, cdiv(CO, BLOCK_N), SPLIT_K). With SPLIT_K > 1 the taps are
    dealt round-robin to SPLIT_K programs per tile, which write float32 partial sums to
    part[s, n, co, oh, ow] (contiguous (OH, OW) planes); tap_conv_reduce_kernel adds them and
    applies the epilogue. Small-Cout problems (ASPP: 21 classes, 34 pixel tiles per 65x65
    image) need this to fill the GPU.
    """
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    pid_s = tl.program_id(2)
    tiles_w = tl.cdiv(OW, BLOCK_W)
    tiles_hw = tl.cdiv(OH, BLOCK_H) * tiles_w
    n = pid_m // tiles_hw
    tile = pid_m % tiles_hw
    oh0 = (tile // tiles_w) * BLOCK_H
    ow0 = (tile % tiles_w) * BLOCK_W

    offs_m = tl.arange(0, BLOCK_H * BLOCK_W)
    oh = oh0 + offs_m // BLOCK_W
    ow = ow0 + offs_m % BLOCK_W
    m_mask = (oh < OH) & (ow < OW)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    n_mask = offs_n < CO
    offs_k = tl.arange(0, BLOCK_K)

    x_img = x_ptr + n.to(tl.int64) * sx_n
    acc = tl.zeros((BLOCK_H * BLOCK_W, BLOCK_N), dtype=tl.float32)
    for t in range(pid_s, T, SPLIT_K):
        tap = taps_ptr + t * _TAP_ROW
        oh_lo = tl.load(tap + _OH_LO)
        oh_hi = tl.load(tap + _OH_HI)
        ow_lo = tl.load(tap + _OW_LO)
        ow_hi = tl.load(tap + _OW_HI)
        # Skip the tap when its valid output rectangle misses this tile: it would only read zeros.
        if (oh0 < oh_hi) & (oh0 + BLOCK_H > oh_lo) & (ow0 < ow_hi) & (ow0 + BLOCK_W > ow_lo):
            dy = tl.load(tap + _DY)
            dx = tl.load(tap + _DX)
            valid = m_mask & (oh >= oh_lo) & (oh < oh_hi) & (ow >= ow_lo) & (ow < ow_hi)
            ih = oh * STRIDE_H + dy
            iw = ow * STRIDE_W + dx
            # Only (BM, 1) and (1, BK) index vectors live across the K loop; the (BM, BK)
            # addresses are formed at each load. Loop-carried 2-D pointer tensors cost two
            # registers per element and made every configuration spill.
            a_rows = x_img + (ih * sx_h + iw * sx_w)[:, None]
            w_tap = w_ptr + t * C * CO
            for k0 in range(0, C, BLOCK_K):
                kk = k0 + offs_k
                k_mask = kk < C
                a = tl.load(a_rows + kk[None, :] * sx_c, mask=valid[:, None] & k_mask[None, :], other=0.0)
                b = tl.load(w_tap + kk[:, None] * CO + offs_n[None, :],
                            mask=k_mask[:, None] & n_mask[None, :], other=0.0)
                acc = tl.dot(a, b, acc, input_precision=DOT_PRECISION)

    mask = m_mask[:, None] & n_mask[None, :]
    if SPLIT_K > 1:
        p_ptrs = (part_ptr + pid_s * sp_s + n.to(tl.int64) * sp_n
                  + offs_n[None, :] * (OH * OW) + (oh * OW + ow)[:, None])
        tl.store(p_ptrs, acc, mask=mask)
    else:
        acc = _epilogue(acc, n, offs_n[None, :], oh[:, None], ow[:, None], mask, n_mask[None, :],
                        bias_ptr, scale_ptr, shift_ptr, res_ptr, sr_n, sr_c, sr_h, sr_w,
                        HAS_BIAS, HAS_SCALE, HAS_SHIFT, HAS_RES, RELU)
        o_ptrs = (out_ptr + n.to(tl.int64) * so_n + offs_n[None, :] * so_c
                  + oh[:, None] * so_h + ow[:, None] * so_w)
        tl.store(o_ptrs, acc.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def tap_conv_reduce_kernel(
    part_ptr, out_ptr, bias_ptr, scale_ptr, shift_ptr, res_ptr,
    total, CO, OH, OW, n_splits,
    so_n, so_c, so_h, so_w,
    sr_n, sr_c, sr_h, sr_w,
    sp_s,
    HAS_BIAS: tl.constexpr, HAS_SCALE: tl.constexpr, HAS_SHIFT: tl.constexpr,
    HAS_RES: tl.constexpr, RELU: tl.constexpr, BLOCK: tl.constexpr,
):
    """Sum the split-K partials part[s, n, co, oh, ow] (contiguous; `total` = N*CO*OH*OW
    elements per split) and apply the epilogue."""
    idx = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = idx < total
    ow = (idx % OW).to(tl.int32)
    oh = ((idx // OW) % OH).to(tl.int32)
    co = ((idx // (OH * OW)) % CO).to(tl.int32)
    n = idx // (CO * OH * OW)
    acc = tl.zeros((BLOCK,), dtype=tl.float32)
    for s in range(0, n_splits):
        acc += tl.load(part_ptr + s * sp_s + idx, mask=mask, other=0.0)
    acc = _epilogue(acc, n, co, oh, ow, mask, mask, bias_ptr, scale_ptr, shift_ptr, res_ptr,
                    sr_n, sr_c, sr_h, sr_w, HAS_BIAS, HAS_SCALE, HAS_SHIFT, HAS_RES, RELU)
    tl.store(out_ptr + n * so_n + co * so_c + oh * so_h + ow * so_w,
             acc.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def tap_conv_wgrad_kernel(
    x_ptr, g_ptr, taps_ptr, part_ptr,
    NB, C, CO, OH, OW,
    sx_n, sx_c, sx_h, sx_w,
    sg_n, sg_c, sg_h, sg_w,
    sp_s,
    STRIDE_H, STRIDE_W,
    DOT_PRECISION: tl.constexpr,
    BLOCK_C: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_P: tl.constexpr, SPLIT_P: tl.constexpr,
):
    """part[s, t, c, co] = sum over a 1/SPLIT_P share of tap t's valid output pixels (all images)
    of x[n, c, oh*SH + dy_t, ow*SW + dx_t] * g[n, co, oh, ow].

    Grid: (T * cdiv(C, BLOCK_C), cdiv(CO, BLOCK_N), SPLIT_P). The reduction runs only over the
    tap's valid output rectangle (from the tap table), so no load needs a padding mask. The
    host sums the SPLIT_P partials (float32) and casts.
    """
    pid_tc = tl.program_id(0)
    pid_n = tl.program_id(1)
    pid_s = tl.program_id(2)
    c_tiles = tl.cdiv(C, BLOCK_C)
    t = pid_tc // c_tiles
    offs_c = (pid_tc % c_tiles) * BLOCK_C + tl.arange(0, BLOCK_C)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    c_mask = offs_c < C
    n_mask = offs_n < CO

    tap = taps_ptr + t * _TAP_ROW
    dy = tl.load(tap + _DY)
    dx = tl.load(tap + _DX)
    oh_lo = tl.load(tap + _OH_LO)
    ow_lo = tl.load(tap + _OW_LO)
    rh = tl.load(tap + _OH_HI) - oh_lo
    rw = tl.load(tap + _OW_HI) - ow_lo
    per_image = rh * rw
    total = NB * per_image
    share = tl.cdiv(tl.cdiv(total, SPLIT_P), BLOCK_P) * BLOCK_P
    p_start = pid_s * share
    p_end = tl.minimum(total, p_start + share)

    acc = tl.zeros((BLOCK_C, BLOCK_N), dtype=tl.float32)
    for p0 in range(p_start, p_end, BLOCK_P):
        p = p0 + tl.arange(0, BLOCK_P)
        p_mask = p < p_end
        img = (p // per_image).to(tl.int64)
        r = p % per_image
        oh = oh_lo + r // rw
        ow = ow_lo + r % rw
        ih = oh * STRIDE_H + dy
        iw = ow * STRIDE_W + dx
        a = tl.load(x_ptr + img[None, :] * sx_n + offs_c[:, None] * sx_c
                    + ih[None, :] * sx_h + iw[None, :] * sx_w,
                    mask=c_mask[:, None] & p_mask[None, :], other=0.0)
        b = tl.load(g_ptr + img[:, None] * sg_n + offs_n[None, :] * sg_c
                    + oh[:, None] * sg_h + ow[:, None] * sg_w,
                    mask=p_mask[:, None] & n_mask[None, :], other=0.0)
        acc = tl.dot(a, b, acc, input_precision=DOT_PRECISION)

    p_ptrs = part_ptr + pid_s * sp_s + (t * C + offs_c[:, None]) * CO + offs_n[None, :]
    tl.store(p_ptrs, acc, mask=c_mask[:, None] & n_mask[None, :])
