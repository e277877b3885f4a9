"""Patch extraction, the nflows MAF (training, resumable checkpoints, saving) and low-likelihood sampling."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from flow_anomaly_ros.flows.maf import MAFConfig, MAFTrainer, build_maf, fast_inverse, sample_with_temperature
from flow_anomaly_ros.model_store import ModelFileError
from flow_anomaly_ros.synthesis.patch_flow import PatchFlow, train_patch_flow
from flow_anomaly_ros.synthesis.patches import PatchCodec, extract_patches, iter_image_dir
from flow_anomaly_ros.synthesis.sampling import (
    LowLikelihoodSampler,
    PatchPool,
    SamplerConfig,
    dihedral,
    uniform_noise_source,
)

P = 4  # 4x4x3 = 48-d keeps these tests fast; the defaults (8x8) are exercised by the CLI and effect tests
TINY = MAFConfig(features=P * P * 3, num_transforms=2, hidden_features=32, num_blocks=1)


def _images(n: int = 6, seed: int = 0) -> list[np.ndarray]:
    """Smooth 'road-like' images: gray gradients with mild noise (a low-entropy inlier distribution)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        base = rng.integers(60, 140)
        ramp = np.linspace(0, 40, 48)[None, :, None]
        img = base + ramp + rng.normal(0, 3, (32, 48, 3))
        out.append(np.clip(img, 0, 255).astype(np.uint8))
    return out


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> PatchFlow:
    patches = extract_patches(_images(), P, per_image=200, rng=np.random.default_rng(0))
    return train_patch_flow(patches, TINY, steps=150, lr=3e-3, batch_size=128, seed=0)


def test_extract_patches_shapes_and_content_come_from_the_images():
    images = _images(2)
    patches = extract_patches(images, 8, per_image=5, rng=np.random.default_rng(1))
    assert patches.shape == (10, 8, 8, 3) and patches.dtype == np.uint8
    p = patches[0]
    hits = [(y, x) for y in range(32 - 7) for x in range(48 - 7) if np.array_equal(images[0][y : y + 8, x : x + 8], p)]
    assert hits


def test_extract_patches_scale_and_errors():
    patches = extract_patches(_images(1), 8, per_image=3, rng=np.random.default_rng(0), scale=0.5)
    assert patches.shape == (3, 8, 8, 3)
    with pytest.raises(ValueError, match="smaller than"):
        extract_patches(_images(1), 8, per_image=1, scale=0.1)
    with pytest.raises(ValueError, match="uint8 HxWx3"):
        extract_patches([np.zeros((10, 10), np.uint8)], 4)
    with pytest.raises(ValueError, match="no images"):
        extract_patches([], 4)


def test_iter_image_dir_reads_pngs_and_reports_missing(tmp_path):
    from PIL import Image

    Image.fromarray(_images(1)[0]).save(tmp_path / "a.png")
    [(path, img)] = list(iter_image_dir(tmp_path))
    assert path.name == "a.png" and img.shape == (32, 48, 3)
    with pytest.raises(FileNotFoundError):
        list(iter_image_dir(tmp_path / "nope"))


def test_codec_round_trip_is_exact_without_noise():
    patches = extract_patches(_images(), P, per_image=20, rng=np.random.default_rng(0))
    codec = PatchCodec.fit(patches)
    np.testing.assert_array_equal(codec.decode(codec.encode(patches)), patches)
    noisy = codec.encode(patches, np.random.default_rng(0))
    np.testing.assert_array_equal(codec.decode(noisy), patches)  # dequantisation noise stays inside the bin
    with pytest.raises(ValueError, match="expects"):
        codec.encode(np.zeros((1, 8, 8, 3), np.uint8))


def test_maf_is_autoregressive_with_permutations_and_reproducible():
    flow = build_maf(TINY)
    names = [type(t).__name__ for t in flow._transform._transforms]
    assert names == ["RandomPermutation", "MaskedAffineAutoregressiveTransform"] * 2
    x = torch.randn(5, TINY.features)
    torch.testing.assert_close(build_maf(TINY).log_prob(x), flow.log_prob(x))
    with pytest.raises(ValueError, match="permutation"):
        MAFConfig(features=4, permutation="shuffle")


@pytest.mark.parametrize(
    "cfg",
    [
        MAFConfig(features=12, num_transforms=2, hidden_features=16),
        MAFConfig(features=12, num_transforms=2, hidden_features=5, num_blocks=3, permutation="reverse"),
        MAFConfig(features=10, num_transforms=2, hidden_features=24, use_residual_blocks=True),
    ],
)
def test_fast_inverse_matches_nflows_inverse(cfg):
    flow = build_maf(cfg).eval()
    with torch.no_grad():
        for p in flow.parameters():
            p.add_(torch.randn_like(p) * 0.1)  # away from the near-identity initialisation
    z = torch.randn(64, cfg.features)
    x_ref, lad_ref = flow._transform.inverse(z)
    x, lad = fast_inverse(flow, z)
    torch.testing.assert_close(x, x_ref, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(lad, lad_ref, rtol=1e-4, atol=1e-4)
    z_back, _ = flow._transform(x)
    torch.testing.assert_close(z_back, z, rtol=1e-3, atol=1e-3)


def test_temperature_sampling_returns_the_flows_own_log_likelihood():
    flow = build_maf(TINY).eval()
    gen = torch.Generator().manual_seed(0)
    x, lp = sample_with_temperature(flow, 16, temperature=2.0, generator=gen)
    torch.testing.assert_close(lp, flow.log_prob(x), rtol=1e-4, atol=1e-3)
    _, lp1 = sample_with_temperature(flow, 400, 1.0, torch.Generator().manual_seed(1))
    _, lp3 = sample_with_temperature(flow, 400, 3.0, torch.Generator().manual_seed(1))
    assert lp3.mean() < lp1.mean()


def test_training_lowers_the_nll(trained):
    assert trained.info["trained_steps"] == 150
    patches = extract_patches(_images(3, seed=5), P, per_image=50, rng=np.random.default_rng(2))
    untrained = PatchFlow.untrained(patches, TINY)
    untrained.codec = trained.codec
    assert trained.log_prob(patches).mean() > untrained.log_prob(patches).mean() + 20


def test_checkpoint_resume_matches_an_uninterrupted_run(tmp_path):
    data = torch.randn(300, 6) * torch.linspace(0.5, 2, 6)
    cfg = MAFConfig(features=6, num_transforms=2, hidden_features=16, num_blocks=1)
    straight = MAFTrainer(build_maf(cfg), data, cfg, batch_size=32, seed=3)
    straight.fit(20)
    ck = tmp_path / "ckpt"
    first = MAFTrainer(build_maf(cfg), data, cfg, batch_size=32, seed=3, checkpoint_dir=ck, checkpoint_every=5)
    first.fit(20, callback=lambda p: p.step >= 12)  # stopped ("killed") at step 12
    assert first.step == 12
    second = MAFTrainer(build_maf(cfg), data, cfg, batch_size=32, seed=3, checkpoint_dir=ck, checkpoint_every=5)
    assert second.fit(20) == 20
    x = torch.randn(10, 6)
    torch.testing.assert_close(second.flow.log_prob(x), straight.flow.log_prob(x), rtol=1e-5, atol=1e-5)


def test_checkpoint_for_another_config_is_refused(tmp_path):
    data = torch.randn(50, 6)
    cfg = MAFConfig(features=6, num_transforms=1, hidden_features=8)
    MAFTrainer(build_maf(cfg), data, cfg, checkpoint_dir=tmp_path / "c").fit(2)
    other = MAFConfig(features=6, num_transforms=2, hidden_features=8)
    with pytest.raises(ModelFileError, match="config"):
        MAFTrainer(build_maf(other), data, other, checkpoint_dir=tmp_path / "c").fit(4)


def test_trainer_rejects_bad_data():
    cfg = MAFConfig(features=3, num_transforms=1, hidden_features=8)
    with pytest.raises(ValueError, match="NaN"):
        MAFTrainer(build_maf(cfg), torch.tensor([[0.0, float("nan"), 1.0]]), cfg)
    with pytest.raises(ValueError, match=r"\(N, 3\)"):
        MAFTrainer(build_maf(cfg), torch.zeros(4, 2), cfg)


def test_patch_flow_save_load_round_trip_and_corruption(trained, tmp_path):
    path = trained.save(tmp_path / "maf")
    loaded = PatchFlow.load(path)
    patches = extract_patches(_images(1), P, per_image=8, rng=np.random.default_rng(0))
    np.testing.assert_allclose(loaded.log_prob(patches), trained.log_prob(patches), rtol=1e-5, atol=1e-4)
    assert loaded.threshold(0.01) == pytest.approx(trained.threshold(0.01))
    (path / "weights.safetensors").write_bytes(b"garbage")
    with pytest.raises(ModelFileError, match="checksum"):
        PatchFlow.load(path)


@pytest.mark.parametrize("mode", ["outside", "boundary"])
def test_rejection_sampling_respects_the_quantile_band(trained, mode):
    temperature = 1.5 if mode == "outside" else 1.0
    cfg = SamplerConfig(mode=mode, temperature=temperature, low_quantile=0.05, high_quantile=0.5, batch_size=256)
    sampler = LowLikelihoodSampler(trained, cfg)
    patches, stats = sampler.sample(64, np.random.default_rng(0))
    assert patches.shape == (64, P, P, 3) and patches.dtype == np.uint8
    assert stats.fallback == 0 and stats.accepted == 64
    assert 0 < stats.acceptance_rate <= 1 and stats.samples_per_s > 0
    lp = trained.log_prob(patches)  # decoded patches, re-scored: still mostly in the band (uint8 rounding/clipping)
    low, high = trained.threshold(0.05), trained.threshold(0.5)
    if mode == "outside":
        assert np.mean(lp < low) > 0.8
    else:
        assert np.mean((lp >= low - 5) & (lp < high + 5)) > 0.6


def test_sampling_is_reproducible_and_reports_fallback_when_the_band_is_unreachable(trained):
    s = LowLikelihoodSampler(trained, SamplerConfig(mode="any", temperature=1.0))
    a, _ = s.sample(10, np.random.default_rng(4))
    b, _ = s.sample(10, np.random.default_rng(4))
    np.testing.assert_array_equal(a, b)
    hard = LowLikelihoodSampler(
        trained, SamplerConfig(mode="outside", temperature=0.05, low_quantile=0.0, max_proposals_factor=2)
    )
    patches, stats = hard.sample(8, np.random.default_rng(0))
    assert len(patches) == 8 and stats.fallback == 8 and stats.proposed == 16
    assert s(5, np.random.default_rng(0)).shape == (5, P, P, 3)  # patch_source interface


def test_sampler_needs_calibration_and_validates_config(trained):
    fresh = PatchFlow.untrained(extract_patches(_images(1), P, 10), TINY)
    with pytest.raises(ValueError, match="calibrat"):
        LowLikelihoodSampler(fresh, SamplerConfig(mode="outside")).sample(2, np.random.default_rng(0))
    with pytest.raises(ValueError, match="quantiles"):
        SamplerConfig(low_quantile=0.5, high_quantile=0.1)
    with pytest.raises(ValueError, match="mode"):
        SamplerConfig(mode="far")


def test_uniform_noise_and_pool_sources():
    noise = uniform_noise_source(8)
    x = noise(100, np.random.default_rng(0))
    assert x.shape == (100, 8, 8, 3) and x.std() > 60
    calls = []

    def slow(n, rng):
        calls.append(n)
        return rng.integers(0, 256, (n, 8, 8, 3), dtype=np.uint8)

    pool = PatchPool(slow, size=16, refresh_every=32, refresh_fraction=0.5)
    rng = np.random.default_rng(0)
    for _ in range(5):
        assert pool(10, rng).shape == (10, 8, 8, 3)
    assert calls == [16, 8]
    patch = np.arange(2 * 2 * 3, dtype=np.uint8).reshape(1, 2, 2, 3)
    variants = {dihedral(patch, np.random.default_rng(i)).tobytes() for i in range(40)}
    assert len(variants) == 8


def test_joint_source_trains_the_maf_while_it_samples_from_step_0():
    from flow_anomaly_ros.synthesis.joint import JointMAFSource

    patches = extract_patches(_images(), P, per_image=200, rng=np.random.default_rng(0))
    source = JointMAFSource.create(
        patches, TINY, SamplerConfig("outside", 1.5), maf_steps_per_call=5, recalibrate_every=2, batch_size=64
    )
    first = source(8, np.random.default_rng(1))  # the MAF is untrained and already sampled
    assert first.shape == (8, P, P, 3) and first.dtype == np.uint8 and source.maf_steps == 5
    nll_before = -source.patch_flow.log_prob(patches[:256]).mean()
    for i in range(20):
        source(4, np.random.default_rng(i))
    assert source.maf_steps == 105 and source.calls == 21
    assert -source.patch_flow.log_prob(patches[:256]).mean() < nll_before  # it learned the inliers meanwhile
    assert source.sampler.total.proposed >= 88 and 0 < source.sampler.total.acceptance_rate <= 1
    with pytest.raises(ValueError, match="maf_steps_per_call"):
        JointMAFSource.create(patches, TINY, SamplerConfig(), maf_steps_per_call=-1)
