"""CUDA lattice kernels against the CPU ones (skipped without a GPU)."""
import pytest
import torch

from fastseg.ops import build_lattice, mean_field, permutohedral_filter
from fastseg.reference.permutohedral import build_lattice_reference, filter_reference
from test_lattice import photo_features

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.mark.parametrize("kind", ["gaussian", "bilateral"])
def test_cuda_build_equals_cpu_build(astronaut, kind):
    feats = photo_features(astronaut, kind)
    cpu = build_lattice(feats)
    gpu = build_lattice(feats.cuda())
    for a, b in zip(cpu, gpu):
        assert b.device.type == "cuda"
        assert torch.equal(a, b.cpu())


@pytest.mark.parametrize("d", [1, 3, 8, 16])
def test_cuda_build_random_and_large_features(d):
    g = torch.Generator().manual_seed(d)
    for scale in (2.0, 30000.0):  # float and double embedding
        feats = torch.randn(5000, d, generator=g) * scale
        ref = build_lattice_reference(feats)
        for a, b in zip(ref, build_lattice(feats.cuda())):
            assert torch.equal(a, b.cpu())


def test_cuda_filter_matches_cpu_and_is_deterministic(astronaut):
    feats = photo_features(astronaut, "bilateral")
    lat_cpu = build_lattice(feats)
    lat_gpu = lat_cpu.to("cuda")
    x = torch.rand(feats.shape[0], 21)
    s = torch.rand(feats.shape[0]) + 0.5
    want = permutohedral_filter(x, lat_cpu, s, s)
    got = permutohedral_filter(x.cuda(), lat_gpu, s.cuda(), s.cuda())
    torch.testing.assert_close(got.cpu(), want, rtol=1e-5, atol=1e-5)
    again = permutohedral_filter(x.cuda(), lat_gpu, s.cuda(), s.cuda())
    assert torch.equal(got, again)  # no float atomics: bitwise repeatable
    back = permutohedral_filter(x.cuda(), lat_gpu, reverse=True)
    torch.testing.assert_close(back.cpu(), permutohedral_filter(x, lat_cpu, reverse=True),
                               rtol=1e-5, atol=1e-4)


def test_cuda_mean_field_matches_cpu(chelsea):
    feats = photo_features(chelsea, "bilateral")
    lat = build_lattice(feats)
    u = torch.rand(feats.shape[0], 7) * 3
    k1 = permutohedral_filter(torch.ones(feats.shape[0], 1), lat)[:, 0]
    n = (1.0 / torch.sqrt(k1.double() + 1e-20)).float()
    for compat in (torch.full((7,), 4.0), -torch.rand(7, 7)):
        want = mean_field(u, [lat], [n], [n], [compat], 10)
        got = mean_field(u.cuda(), [lat.to("cuda")], [n.cuda()], [n.cuda()], [compat.cuda()], 10)
        torch.testing.assert_close(got.cpu(), want, rtol=0, atol=1e-4)


@pytest.mark.parametrize("m", [1, 21, 182])
def test_cuda_filter_heavy_vertices(m):
    # Groups of identical points put `size` entries on each of their d+1 vertices; the CUDA splat
    # sums vertices above 64 entries in 64-entry chunks, so the sizes straddle the chunk bounds
    # (64 alone, 65 = 64 + 1, 128, 129) and one is a flat region's thousands.
    g = torch.Generator().manual_seed(m)
    sizes = [1, 63, 64, 65, 127, 128, 129, 200, 8271]
    centres = torch.arange(len(sizes), dtype=torch.float32)[:, None] * 50.0 * torch.ones(1, 5)
    feats = torch.cat([centres[i].expand(s, 5) for i, s in enumerate(sizes)])
    feats = torch.cat([feats, torch.randn(3000, 5, generator=g) * 20])  # ordinary light vertices
    feats = feats[torch.randperm(feats.shape[0], generator=g)]  # heavy entries scattered in memory
    lat = build_lattice(feats)
    degree = lat.splat_offsets[1:] - lat.splat_offsets[:-1]
    assert {64, 65, 129, 8271} <= set(degree.tolist())  # the cases the test is for are there
    x = torch.rand(feats.shape[0], m, generator=g)
    s = torch.rand(feats.shape[0], generator=g) + 0.5
    want = filter_reference(x.double(), lat, s.double(), s.double())
    got = permutohedral_filter(x.cuda(), lat.to("cuda"), s.cuda(), s.cuda())
    torch.testing.assert_close(got.cpu().double(), want, rtol=2e-5, atol=1e-4)
    assert torch.equal(got, permutohedral_filter(x.cuda(), lat.to("cuda"), s.cuda(), s.cuda()))
