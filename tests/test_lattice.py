"""The native permutohedral lattice against the plain-PyTorch reference, tensor by tensor."""
import pytest
import torch

from fastseg.crf.features import bilateral_features, gaussian_features
from fastseg import ops as fastseg_ops
from fastseg.ops import Lattice, build_lattice, permutohedral_filter
from fastseg.reference.permutohedral import build_lattice_reference, filter_reference

FIELDS = ("vertices", "weights", "neighbors", "splat_offsets", "splat_points", "splat_weights",
          "keys")


def assert_same_lattice(a, b):
    for name, x, y in zip(FIELDS, a, b):
        assert x.dtype == y.dtype, name
        assert x.shape == y.shape, f"{name}: {tuple(x.shape)} vs {tuple(y.shape)}"
        assert torch.equal(x.cpu(), y.cpu()), f"{name} differs"


@pytest.fixture(params=["sort", "hash"])
def build_path(request, monkeypatch):
    """Runs a test with each CPU build path: sorting packed keys (the default where keys fit in
    64 bits) and the hash table (wider keys, and what the GPU runs)."""
    monkeypatch.setenv("FASTSEG_BUILD_BY_HASHING", "1" if request.param == "hash" else "0")
    return request.param


def photo_features(image, kind):
    t = torch.from_numpy(image)
    if kind == "gaussian":
        return gaussian_features(t.shape[0], t.shape[1], 1.0, 1.0)
    return bilateral_features(t, 67.0, 67.0, (3.0, 3.0, 3.0))


@pytest.mark.parametrize("kind", ["gaussian", "bilateral"])
def test_photo_lattice_matches_reference(chelsea, kind, build_path):
    feats = photo_features(chelsea[::2, ::2].copy(), kind)
    assert_same_lattice(build_lattice(feats), build_lattice_reference(feats))


@pytest.mark.parametrize("d", [1, 2, 3, 4, 5, 6, 7, 8, 16])
def test_random_features_match_reference(d, build_path):
    g = torch.Generator().manual_seed(d)
    feats = torch.randn(777, d, generator=g) * 2.5
    lat = build_lattice(feats)
    assert lat.dim == d and lat.n_points == 777
    assert_same_lattice(lat, build_lattice_reference(feats))


def packed_key_bits(lat):
    """Bounds on the bits the sorting build packs a key into (a remainder modulo d+1 and d
    quotients, lattice_sort_cpu.cpp), and the bits of the coordinates packed one field each,
    which its neighbour search uses where they fit in 64 bits."""
    d = lat.dim
    quotients = torch.div(lat.keys.long(), d + 1, rounding_mode="floor")
    spans = (quotients.max(0).values - quotients.min(0).values).tolist()
    remainder_bits = int(d).bit_length()
    compact_most = sum(int(s + 3).bit_length() for s in spans) + remainder_bits
    coordinates_least = sum(int(s + 2).bit_length() + remainder_bits for s in spans)
    return compact_most, coordinates_least


@pytest.mark.parametrize("d,scale", [(7, 12.0), (8, 5.0)])
def test_keys_that_pack_only_as_quotients_match_reference(d, scale, build_path):
    # Keys that fit in 64 bits as remainder + quotients but not as coordinates: the sorting
    # build takes them, and finds neighbours with a merge pointer per kind of key.
    g = torch.Generator().manual_seed(d)
    feats = torch.randn(3000, d, generator=g) * scale
    lat = build_lattice(feats)
    compact_most, coordinates_least = packed_key_bits(lat)
    assert compact_most <= 64 < coordinates_least
    assert_same_lattice(lat, build_lattice_reference(feats))


def test_integer_features_with_ties_match_reference(build_path):
    # Integer positions with unit std put many points exactly on simplex boundaries.
    feats = torch.stack(torch.meshgrid(torch.arange(40.0), torch.arange(37.0), indexing="xy"),
                        -1).reshape(-1, 2)
    assert_same_lattice(build_lattice(feats), build_lattice_reference(feats))


def test_large_coordinates_use_exact_double_embedding(build_path):
    # Lattice coordinates beyond pydensecrf's int16 keys (it would overflow here).
    feats = gaussian_features(300, 200, 0.01, 0.01)
    lat = build_lattice(feats)
    assert int(lat.keys.abs().max()) > 32767
    assert_same_lattice(lat, build_lattice_reference(feats))


def test_single_point_and_duplicates(build_path):
    one = build_lattice(torch.tensor([[0.3, -1.2]]))
    assert one.n_vertices == 3 and torch.allclose(one.weights.sum(), torch.tensor(1.0))
    same = build_lattice(torch.zeros(50, 4))
    assert same.n_vertices == 5  # every point shares one simplex
    assert_same_lattice(same, build_lattice_reference(torch.zeros(50, 4)))


def test_barycentric_weights_are_a_partition_of_unity(astronaut):
    lat = build_lattice(photo_features(astronaut, "bilateral"))
    torch.testing.assert_close(lat.weights.sum(1), torch.ones(lat.n_points), atol=2e-6, rtol=0)
    assert float(lat.weights.min()) >= -1e-6


@pytest.mark.parametrize("n_threads", [1, 2])
@pytest.mark.parametrize("kind", ["gaussian", "bilateral"])
@pytest.mark.parametrize("m", [1, 3, 8, 21])
def test_filter_matches_reference(chelsea, restore_threads, kind, m, n_threads):
    # One thread splats in scatter form (and sweeps the gaussian lattice, its splat fused in);
    # two gather and run the passes in parallel. Both directions orders, both paths.
    torch.set_num_threads(n_threads)
    feats = photo_features(chelsea[::3, ::3].copy(), kind)
    lat = build_lattice(feats)
    g = torch.Generator().manual_seed(m)
    x = torch.rand(lat.n_points, m, generator=g)
    s_in = torch.rand(lat.n_points, generator=g) + 0.5
    s_out = torch.rand(lat.n_points, generator=g) + 0.5
    for reverse in (False, True):
        got = permutohedral_filter(x, lat, s_in, s_out, reverse)
        want = filter_reference(x, lat, s_in, s_out, reverse)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5 * float(want.abs().max()))
    torch.testing.assert_close(permutohedral_filter(x, lat), filter_reference(x, lat),
                               rtol=1e-5, atol=1e-4)


def test_filter_accepts_non_contiguous_values(chelsea):
    lat = build_lattice(photo_features(chelsea[::4, ::4].copy(), "bilateral"))
    x = torch.rand(5, lat.n_points).T  # non-contiguous (N, 5)
    torch.testing.assert_close(permutohedral_filter(x, lat),
                               permutohedral_filter(x.contiguous(), lat))


def test_mean_field_reads_and_returns_label_major_layouts(chelsea):
    # dense_crf passes its (M, N) unary transposed; Q must come back in that layout with the
    # same bits as from a point-major copy, and q_init may be strided too.
    lat = build_lattice(photo_features(chelsea[::4, ::4].copy(), "bilateral"))
    g = torch.Generator().manual_seed(5)
    unary_lm = torch.rand(21, lat.n_points, generator=g) * 5  # label-major
    q0_lm = torch.softmax(torch.rand(21, lat.n_points, generator=g), 0)
    s = torch.rand(lat.n_points, generator=g) + 0.5
    args = ([[t] for t in lat.index_tensors], [s], [s], [torch.full((21,), 3.0)], 2)
    want = torch.ops.fastseg.mean_field(unary_lm.T.contiguous(), q0_lm.T.contiguous(), *args[0],
                                        *args[1:])
    got = torch.ops.fastseg.mean_field(unary_lm.T, q0_lm.T, *args[0], *args[1:])
    assert got.stride() == unary_lm.T.stride()
    assert torch.equal(got, want)
    assert want.is_contiguous()


@pytest.mark.parametrize("n", [1, 15, 16, 17, 33, 1000])
@pytest.mark.parametrize("m", [2, 5, 8, 9, 17, 24, 182])
def test_label_major_matrices_round_trip_through_padded_rows(n, m):
    # Label-major matrices enter and leave the padded rows through register transposes (8 x 8
    # tiles, 16 points at a time, the rest one by one): with no iteration, q_init must come back
    # bit for bit, and softmax(-unary) must not depend on the unary's layout.
    g = torch.Generator().manual_seed(n * 1000 + m)
    unary_lm = torch.randn(m, n, generator=g) * 4
    q_lm = torch.rand(m, n, generator=g)
    q = fastseg_ops.mean_field(unary_lm.T, [], [], [], [], 0, q_init=q_lm.T)
    assert torch.equal(q, q_lm.T)
    assert n == 1 or q.stride() == unary_lm.T.stride()  # (one point: any layout is both)
    for iterations in (0, 1):
        got = fastseg_ops.mean_field(unary_lm.T, [], [], [], [], iterations)
        want = fastseg_ops.mean_field(unary_lm.T.contiguous(), [], [], [], [], iterations)
        assert torch.equal(got, want)
        torch.testing.assert_close(want, torch.softmax(-unary_lm.T, 1))


def renumber_vertices(lat, order):
    """The same lattice with vertex order[i] renamed i (no longer numbered by first use)."""
    v = lat.n_vertices
    new_id = torch.empty(v + 1, dtype=torch.int64)
    new_id[order] = torch.arange(v)
    new_id[v] = v
    counts = (lat.splat_offsets[1:] - lat.splat_offsets[:-1])[order]
    offsets = torch.zeros(v + 1, dtype=torch.int64)
    offsets[1:] = counts.cumsum(0)
    src = torch.arange(int(offsets[-1])) + torch.repeat_interleave(
        lat.splat_offsets[:-1][order] - offsets[:-1], counts)
    return Lattice(new_id[lat.vertices.long()].int(), lat.weights,
                   new_id[lat.neighbors[:, order].long()].int(), offsets,
                   lat.splat_points[src], lat.splat_weights[src], lat.keys[order])


def swapped_pair_order(lat, after_entry):
    """Vertex numbers 0..V-1 with k and k+1 exchanged, k the first vertex met after entry
    `after_entry`: the numbering by first use broken at a single entry."""
    k = int(lat.vertices.flatten()[:after_entry].max()) + 1
    assert k + 1 < lat.n_vertices
    order = torch.arange(lat.n_vertices)
    order[k], order[k + 1] = k + 1, k
    return order


@pytest.mark.parametrize("n_threads", [1, 2])
@pytest.mark.parametrize("numbering", ["random", "one_pair_swapped"])
def test_filter_and_mean_field_do_not_depend_on_vertex_numbering(chelsea, restore_threads,
                                                                  n_threads, numbering):
    # Vertex numbers are only names: any numbering filters to the same values. (The scatter
    # splat skips zeroing for lattices numbered by first use, the build's numbering; others
    # must take the general path, including one whose numbering breaks at a single entry.)
    torch.set_num_threads(n_threads)
    lat = build_lattice(photo_features(chelsea[::3, ::3].copy(), "bilateral"))
    order = (torch.randperm(lat.n_vertices, generator=torch.Generator().manual_seed(0))
             if numbering == "random" else swapped_pair_order(lat, lat.vertices.numel() // 2))
    shuffled = renumber_vertices(lat, order)
    g = torch.Generator().manual_seed(1)
    x = torch.rand(lat.n_points, 21, generator=g)
    s = torch.rand(lat.n_points, generator=g) + 0.5
    assert torch.equal(permutohedral_filter(x, shuffled, s, s), permutohedral_filter(x, lat, s, s))
    gauss = build_lattice(photo_features(chelsea[::3, ::3].copy(), "gaussian"))
    unary = torch.rand(lat.n_points, 21, generator=g) * 3
    compat = torch.full((21,), 3.0)

    def run(bilateral):
        lats = [gauss, bilateral]
        return fastseg_ops.mean_field(unary, lats, [s, s], [s, s], [compat, compat], 3)

    assert torch.equal(run(shuffled), run(lat))


def mean_field_one_iteration_at_a_time(unary, lats, scales, compats, iterations):
    """Mean-field as separate one-iteration calls: a single iteration blurs by passes from one
    buffer into another, while a call of several runs them in place along blur chains."""
    q = None
    for _ in range(iterations):
        q = fastseg_ops.mean_field(unary, lats, scales, scales, compats, 1, q_init=q)
    return q


@pytest.mark.parametrize("n_threads", [1, 2])
@pytest.mark.parametrize("terms,step", [("bilateral", 3), ("gaussian+bilateral", 3),
                                        ("gaussian+bilateral", 8)])
@pytest.mark.parametrize("m", [1, 5, 21, 182])
def test_blur_chains_give_the_bits_of_the_plain_passes(chelsea, restore_threads, n_threads,
                                                        terms, step, m):
    # Every pass-blurred term, alone or beside a swept one; at step 8 the image is too small for
    # the gaussian sweep, so both terms are blurred by passes (the gaussian first, shared out
    # between the threads, with an odd number of passes).
    torch.set_num_threads(n_threads)
    image = chelsea[::step, ::step].copy()
    lats = [build_lattice(photo_features(image, kind)) for kind in terms.split("+")]
    g = torch.Generator().manual_seed(7)
    n = lats[0].n_points
    unary = torch.rand(n, m, generator=g) * 4
    s = torch.rand(n, generator=g) + 0.5
    compats = [torch.full((m,), 3.0)] * len(lats)
    want = mean_field_one_iteration_at_a_time(unary, lats, [s] * len(lats), compats, 4)
    got = fastseg_ops.mean_field(unary, lats, [s] * len(lats), [s] * len(lats), compats, 4)
    assert torch.equal(got, want)


def test_asymmetric_neighbour_table_is_blurred_as_given(chelsea, restore_threads):
    # Blur chains need each vertex's next neighbour to name it as its previous one, as every
    # built lattice's table does. A table that breaks this (here one vertex's next neighbour is
    # redirected) must be blurred as written, by the plain passes, not along chains.
    torch.set_num_threads(2)
    lat = build_lattice(photo_features(chelsea[::4, ::4].copy(), "bilateral"))
    nb = lat.neighbors.clone()
    v = lat.n_vertices
    heads = ((nb[0, :, 0] == v) & (nb[0, :, 1] < v)).nonzero().flatten()
    a, b = int(heads[0]), int(heads[1])
    nb[0, a, 1] = nb[0, b, 1]  # a's next now has b as its previous, not a
    broken = lat._replace(neighbors=nb)
    g = torch.Generator().manual_seed(8)
    unary = torch.rand(lat.n_points, 8, generator=g) * 4
    s = torch.rand(lat.n_points, generator=g) + 0.5
    compats = [torch.full((8,), 3.0)]
    want = mean_field_one_iteration_at_a_time(unary, [broken], [s], compats, 3)
    got = fastseg_ops.mean_field(unary, [broken], [s], [s], compats, 3)
    assert torch.equal(got, want)
    assert not torch.equal(got, fastseg_ops.mean_field(unary, [lat], [s], [s], compats, 3))


def test_reverse_filter_is_the_transpose(chelsea):
    lat = build_lattice(photo_features(chelsea[::4, ::4].copy(), "bilateral"))
    g = torch.Generator().manual_seed(0)
    x = torch.rand(lat.n_points, 4, generator=g, dtype=torch.float32)
    y = torch.rand(lat.n_points, 4, generator=g, dtype=torch.float32)
    lhs = (permutohedral_filter(x, lat) * y).double().sum()
    rhs = (x * permutohedral_filter(y, lat, reverse=True)).double().sum()
    assert abs(float(lhs - rhs)) <= 1e-5 * abs(float(lhs))


def test_filter_gradients_match_reference_autograd(chelsea):
    lat = build_lattice(photo_features(chelsea[::5, ::5].copy(), "bilateral"))
    g = torch.Generator().manual_seed(1)
    n = lat.n_points
    inputs = [torch.rand(n, 3, generator=g), torch.rand(n, generator=g) + 0.5,
              torch.rand(n, generator=g) + 0.5]
    w = torch.rand(n, 3, generator=g)
    grads = []
    for fn in (permutohedral_filter, filter_reference):
        leaves = [t.clone().requires_grad_() for t in inputs]
        (fn(leaves[0], lat, leaves[1], leaves[2]) * w).sum().backward()
        grads.append([t.grad for t in leaves])
    for got, want in zip(*grads):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4 * float(want.abs().max()))


def test_operators_pass_opcheck(chelsea):
    feats = photo_features(chelsea[::8, ::8].copy(), "bilateral")
    torch.library.opcheck(torch.ops.fastseg.permutohedral_build.default, (feats,),
                          test_utils=("test_schema", "test_faketensor"))
    lat = build_lattice(feats)
    x = torch.rand(lat.n_points, 4)
    s = torch.rand(lat.n_points) + 0.5
    torch.library.opcheck(torch.ops.fastseg.permutohedral_filter.default,
                          (x, *lat.index_tensors, s, s, False))
    u = torch.rand(lat.n_points, 4)
    torch.library.opcheck(
        torch.ops.fastseg.mean_field.default,
        (u, None, *[[t] for t in lat.index_tensors], [s], [s], [torch.full((4,), 2.0)], 3))


@pytest.mark.parametrize("kind,m", [("bilateral", 21), ("gaussian", 21), ("gaussian", 3),
                                    ("gaussian", 182), ("bilateral", 1)])
def test_build_and_filter_are_deterministic_across_thread_counts(astronaut, restore_threads,
                                                                 build_path, kind, m):
    # One thread and two take different code paths (scatter vs gather splat; the gaussian
    # lattice's single-sweep blur vs parallel passes) that must give the same bits.
    feats = photo_features(astronaut, kind)
    g = torch.Generator().manual_seed(3)
    x = torch.rand(feats.shape[0], m, generator=g)
    s_in, s_out = torch.rand(2, feats.shape[0], generator=g) + 0.5
    runs = []
    for n_threads in (1, 2, 3, 1):  # 3: more threads than cores, and other chunk counts
        torch.set_num_threads(n_threads)
        lat = build_lattice(feats)
        runs.append((lat, permutohedral_filter(x, lat, s_in, s_out)))
    for lat, out in runs[1:]:
        assert_same_lattice(lat, runs[0][0])
        assert torch.equal(out, runs[0][1])


@pytest.mark.parametrize("revisit", [False, True])
def test_swept_gaussian_lattice_with_late_revisits(restore_threads, revisit):
    # On one thread the gaussian lattice is splatted and blurred in one cache-resident sweep,
    # which needs every vertex's points to arrive within a bounded window; a point at the end
    # that revisits the first pixel's vertices breaks that bound (the splat must then run
    # separately). Both must give the bits of two threads' gather splat and blur passes.
    feats = gaussian_features(240, 200, 1.0, 1.0)
    if revisit:
        feats = torch.cat((feats, feats[:1]))
    g = torch.Generator().manual_seed(5)
    x = torch.rand(feats.shape[0], 21, generator=g)
    s_in, s_out = torch.rand(2, feats.shape[0], generator=g) + 0.5
    lat = build_lattice(feats)
    outs = []
    for n_threads in (1, 2):
        torch.set_num_threads(n_threads)
        outs.append(permutohedral_filter(x, lat, s_in, s_out))
    assert torch.equal(outs[0], outs[1])
    ref = filter_reference(x.double(), build_lattice_reference(feats), s_in.double(),
                           s_out.double())
    torch.testing.assert_close(outs[0].double(), ref, rtol=1e-4, atol=1e-5)


def window_features(y0, y1, x0, x1, std):
    ys, xs = torch.meshgrid(torch.arange(y0, y1, dtype=torch.float32),
                            torch.arange(x0, x1, dtype=torch.float32), indexing="ij")
    s = torch.tensor([std], dtype=torch.float32)
    return torch.stack((xs.reshape(-1) / s, ys.reshape(-1) / s), 1)


@pytest.mark.parametrize("size,std", [(3000, 1.0), (1200, 0.1)])
def test_big_image_with_small_std_has_no_key_overflow(size, std):
    # 3000 x 3000 pixels at sxy = 1 (9M points, 10M vertices), and 1200 x 1200 at sxy = 0.1
    # (lattice coordinates beyond int16, where pydensecrf's keys wrap around). The filter is
    # local (3 blur passes of +-1 lattice step), so deep inside any window its response depends
    # only on the window's points: the reference lattice (int64 keys, no overflow possible) of
    # a window, in absolute coordinates, must give the same values there.
    win, margin = 64, 16
    feats = gaussian_features(size, size, std, std)
    lat = build_lattice(feats)
    assert lat.n_vertices > size * size
    k1 = permutohedral_filter(torch.ones(feats.shape[0], 1), lat)[:, 0].reshape(size, size)
    for y0, x0 in [(size - win, size - win), (size // 2, size // 5), (0, size - win)]:
        ref_lat = build_lattice_reference(window_features(y0, y0 + win, x0, x0 + win, std))
        ref = filter_reference(torch.ones(win * win, 1), ref_lat)[:, 0].reshape(win, win)
        got = k1[y0:y0 + win, x0:x0 + win]
        inner = (slice(margin, win - margin),) * 2
        torch.testing.assert_close(got[inner], ref[inner], rtol=1e-6, atol=1e-6)


def test_too_large_features_are_rejected_before_work():
    with pytest.raises(RuntimeError, match="too large"):
        build_lattice(torch.tensor([[0.0, 1e12]]))
    with pytest.raises(RuntimeError, match="NaN or Inf"):
        build_lattice(torch.tensor([[0.0, float("nan")]]))


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_feature_anywhere_is_named_by_dimension(bad):
    # Many points (the bound is computed in parallel chunks), one bad value near the end.
    feats = torch.rand(100_000, 5) * 10
    feats[99_000, 3] = bad
    with pytest.raises(RuntimeError, match=r"NaN or Inf \(dimension 3\)"):
        build_lattice(feats)
