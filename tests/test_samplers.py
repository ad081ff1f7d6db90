"""Samplers: the contract over every registered entry, and statistical checks of each formula.

Expected class probabilities are computed here by hand from the class counts (a few lines of
numpy), never by calling the sampler's own formula. Statistical bounds are 5 binomial standard
deviations of the empirical frequency; the streams are seeded, so the tests are deterministic.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Sampler, TensorDataset

import lttoolbox.samplers as samplers_pkg
from lttoolbox.epochs import EpochAware
from lttoolbox.errors import ConfigError, DataError, LTError
from lttoolbox.registry import SAMPLERS
from lttoolbox.samplers import (ClassBalancedSampler, CMOWeightedSampler, InstanceSampler,
                                LTSampler, ProgressiveSampler, RandomOverSampler,
                                RandomUnderSampler, SquareRootSampler)

ALL = sorted(SAMPLERS.names())
#: Samplers whose epoch length is set by their definition (no ``num_samples``).
FIXED_LENGTH = {n for n in ALL
                if "num_samples" in getattr(SAMPLERS.get(n), "fixed_parameters", ())}
COUNTS = np.array([400, 150, 60, 20, 5])
C, N = len(COUNTS), int(COUNTS.sum())
SIGMAS = 5.0


def make_labels(counts=COUNTS, seed=0) -> np.ndarray:
    labels = np.repeat(np.arange(len(counts)), counts)
    np.random.default_rng(seed).shuffle(labels)
    return labels


LABELS = make_labels()


def context(labels=LABELS, **overrides):
    """What the trainer offers (class_counts included, which no sampler names)."""
    ctx = dict(labels=labels, class_counts=np.bincount(labels).tolist(),
               num_classes=int(labels.max()) + 1, seed=3, total_epochs=10, rank=0, world_size=1)
    ctx.update(overrides)
    return ctx


def build(name, labels=LABELS, ctx=None, **params):
    ctx = dict(ctx or context(labels))
    if not SAMPLERS.get(name).single_label and np.ndim(ctx["labels"]) == 1:
        # a sampler for multi-hot rows only: the same images, one label each, as one-hot rows
        ctx["labels"] = np.eye(ctx["num_classes"])[ctx["labels"]]
    return SAMPLERS.build({"name": name, **params}, **ctx)


def assert_frequencies(observed_counts, p, draws, sigmas=SIGMAS):
    """Empirical frequencies within `sigmas` binomial standard deviations of p (0 where p = 0)."""
    observed = np.asarray(observed_counts, dtype=np.float64) / draws
    p = np.asarray(p, dtype=np.float64)
    bound = sigmas * np.sqrt(p * (1 - p) / draws) + 1e-12
    worst = np.max(np.abs(observed - p) / bound)
    assert worst <= 1.0, f"frequencies {observed.round(5)} vs p {p.round(5)}: {worst:.2f} x bound"


def class_counts_of(indices, labels=LABELS, num_classes=C):
    return np.bincount(labels[np.asarray(indices)], minlength=num_classes)


# --------------------------------------------------------------------------- registry, imports
def test_every_sampler_is_registered_and_importable_from_the_package():
    assert ALL
    for name in ALL:
        cls = SAMPLERS.get(name)
        assert getattr(samplers_pkg, cls.__name__) is cls
        assert issubclass(cls, LTSampler) and issubclass(cls, Sampler)
        assert issubclass(cls, EpochAware)
        assert cls.registry_name == name
        assert cls.__doc__ and "Recipe::" in cls.__doc__


# --------------------------------------------------------------------------- contract, per entry
@pytest.mark.parametrize("name", ALL)
def test_indices_contract(name):
    sampler = build(name)
    sampler.set_epoch(1)
    idx = sampler.indices()
    assert isinstance(idx, torch.Tensor) and idx.dtype == torch.int64 and idx.ndim == 1
    assert len(idx) == len(sampler) == sampler.epoch_length > 0
    assert int(idx.min()) >= 0 and int(idx.max()) < N
    assert list(iter(sampler)) == idx.tolist()
    probs = sampler.class_probabilities()
    assert probs.shape == (C,) and np.all(probs >= 0) and math.isclose(probs.sum(), 1.0)


@pytest.mark.parametrize("name", ALL)
def test_same_seed_and_epoch_give_same_indices_and_others_differ(name):
    a, b = build(name), build(name)
    a.set_epoch(4)
    b.set_epoch(4)
    first = a.indices()
    assert torch.equal(first, b.indices())
    a.set_epoch(5)
    assert not torch.equal(first, a.indices())
    a.set_epoch(4)  # going back reproduces the epoch: nothing is carried over between epochs
    assert torch.equal(first, a.indices())
    other_seed = build(name, ctx=context(seed=4))
    other_seed.set_epoch(4)
    assert not torch.equal(first, other_seed.indices())


@pytest.mark.parametrize("name", ALL)
def test_global_random_states_are_untouched(name):
    torch_state, np_state = torch.get_rng_state(), np.random.get_state()
    sampler = build(name)
    sampler.set_epoch(2)
    sampler.indices()
    assert torch.equal(torch_state, torch.get_rng_state())
    after = np.random.get_state()
    assert np.array_equal(np_state[1], after[1]) and np_state[2:] == after[2:]


@pytest.mark.parametrize("name", ALL)
def test_tensor_labels_and_inferred_num_classes_give_the_same_stream(name):
    reference = build(name)
    labels = build(name).context.labels  # one-hot rows for a sampler of multi-hot rows only
    from_tensor = SAMPLERS.build({"name": name}, labels=torch.as_tensor(labels), seed=3,
                                 total_epochs=10)
    assert from_tensor.num_classes == C
    for s in (reference, from_tensor):
        s.set_epoch(3)
    assert torch.equal(reference.indices(), from_tensor.indices())


@pytest.mark.parametrize("name", ALL)
def test_works_as_a_dataloader_sampler(name):
    sampler = build(name)
    data = TensorDataset(torch.arange(N))
    loader = DataLoader(data, batch_size=64, sampler=sampler)
    sampler.set_epoch(1)
    seen = torch.cat([batch for (batch,) in loader])
    assert torch.equal(seen, sampler.indices())


@pytest.mark.parametrize("name", ALL)
def test_deferred_start_uses_the_instance_stream_before_start_epoch(name):
    deferred = build(name, start_epoch=3)
    plain = InstanceSampler(LABELS, num_classes=C, seed=3)
    for epoch in range(3):
        deferred.set_epoch(epoch)
        plain.set_epoch(epoch)
        assert torch.equal(deferred.indices(), plain.indices())
        assert np.allclose(deferred.class_probabilities(), COUNTS / N)
        assert len(deferred) == N
    deferred.set_epoch(3)
    if name != "instance":
        assert not torch.equal(deferred.indices(), plain.indices())
    if name != "progressive":  # same (seed, epoch), same stream as the undeferred sampler
        undeferred = build(name)
        undeferred.set_epoch(3)
        assert torch.equal(deferred.indices(), undeferred.indices())


@pytest.mark.parametrize("name", ALL)
def test_end_epoch_returns_to_the_instance_stream(name):
    windowed = build(name, start_epoch=1, end_epoch=3)
    plain = InstanceSampler(LABELS, num_classes=C, seed=3)
    windowed.set_epoch(3)
    plain.set_epoch(3)
    assert torch.equal(windowed.indices(), plain.indices())


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("world_size", [2, 3])
def test_ranks_take_disjoint_slices_of_the_padded_stream(name, world_size):
    full = build(name)
    full.set_epoch(2)
    stream = full.indices().numpy()
    parts = []
    for rank in range(world_size):
        s = build(name, ctx=context(rank=rank, world_size=world_size))
        s.set_epoch(2)
        parts.append(s.indices().numpy())
        assert len(s) == len(parts[-1]) == math.ceil(len(stream) / world_size)
    interleaved = np.stack(parts, axis=1).ravel()  # position k * world_size + r came from rank r
    padded = np.concatenate([stream, stream])[: len(interleaved)]  # wrap-around padding
    assert np.array_equal(interleaved, padded)


def test_instance_ranks_cover_every_image_exactly_once():
    labels = make_labels([6, 3, 1])  # N = 10, divisible by 2
    slices = []
    for rank in range(2):
        s = InstanceSampler(labels, seed=0, rank=rank, world_size=2)
        s.set_epoch(7)
        slices.append(set(s.indices().tolist()))
    assert slices[0].isdisjoint(slices[1]) and slices[0] | slices[1] == set(range(10))


# --------------------------------------------------------------------------- bad input
BAD_PARAMS = [
    ("num_samples", 0), ("num_samples", 2.5), ("seed", -1), ("seed", "7"), ("start_epoch", -1),
    ("world_size", 0), ("rank", -1), ("num_classes", 0), ("total_epochs", 0),
]


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("param,value", BAD_PARAMS)
def test_bad_parameters_raise_config_errors_naming_them(name, param, value):
    with pytest.raises(ConfigError) as err:
        SAMPLERS.build({"name": name, param: value}, **context())
    assert param in str(err.value) and "sampler" in str(err.value)


@pytest.mark.parametrize("name", ALL)
def test_rank_outside_world_and_unknown_parameter(name):
    with pytest.raises(ConfigError, match="rank"):
        build(name, ctx=context(rank=2, world_size=2))
    with pytest.raises(ConfigError, match="sampler.gamma"):
        build(name, gamma=1.0)
    with pytest.raises(ConfigError, match="end_epoch"):
        build(name, start_epoch=5, end_epoch=5)


@pytest.mark.parametrize("name", ALL)
def test_a_window_that_never_opens_warns(name):
    with pytest.warns(UserWarning, match="start_epoch"):
        build(name, start_epoch=10, ctx=context(total_epochs=10))


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("labels,num_classes,match", [
    (np.array([], dtype=np.int64), 3, "empty"),
    (np.array([0, 1, 3, 1]), 3, "label 3 at position 2 is outside"),
    (np.array([0, -1, 1]), 2, "label -1"),
    (np.array([0, 0, 2, 2]), 3, r"class 1\)"),
    (np.zeros((2, 2, 1), dtype=np.int64), 2, "1-D"),  # 2-D: a multi-label matrix
    (np.array([0.0, 1.0]), 2, "integers"),
])
def test_bad_labels_raise_data_errors(name, labels, num_classes, match):
    with pytest.raises(DataError, match=match):
        SAMPLERS.get(name)(labels=labels, num_classes=num_classes, total_epochs=4)
    # Through the registry the message survives (registry.build re-wraps ValueErrors, DataError
    # included, as a ConfigError keyed 'sampler').
    with pytest.raises(LTError, match=match):
        SAMPLERS.build({"name": name}, labels=labels, num_classes=num_classes, total_epochs=4)


# --------------------------------------------------------------------------- formulas
def draw_frequencies(sampler, epoch):
    sampler.set_epoch(epoch)
    idx = sampler.indices().numpy()
    return class_counts_of(idx), len(idx)


M = 200_000  # draws per statistical check: 5 sigma is below 0.005 in frequency


@pytest.mark.parametrize("name,params,expected", [
    ("class_balanced", {}, np.full(C, 1 / C)),
    ("square_root", {}, np.sqrt(COUNTS) / np.sqrt(COUNTS).sum()),
    ("square_root", {"q": 0.25}, COUNTS ** 0.25 / (COUNTS ** 0.25).sum()),
    ("square_root", {"q": 1.0}, COUNTS / N),
    ("square_root", {"q": -0.5}, (1 / np.sqrt(COUNTS)) / (1 / np.sqrt(COUNTS)).sum()),
    ("cmo_weighted", {"weighting": "class"}, (1 / COUNTS) / (1 / COUNTS).sum()),
    ("cmo_weighted", {"weighting": "class", "r": 0.5},
     COUNTS ** -0.5 / (COUNTS ** -0.5).sum()),
])
def test_class_conditional_frequencies_match_p(name, params, expected):
    sampler = build(name, num_samples=M, **params)
    assert np.allclose(sampler.class_probabilities(), expected)
    counts, draws = draw_frequencies(sampler, epoch=5)
    assert draws == M
    assert_frequencies(counts, expected, M)


@pytest.mark.parametrize("r", [1.0, 0.5, 2.0])
def test_cmo_default_reproduces_the_official_per_image_weights(r):
    # The official code's WeightedRandomSampler: image i has weight n_{y_i}^(-r), N draws.
    image_weight = np.bincount(LABELS).astype(float)[LABELS] ** -r
    expected = np.bincount(LABELS, weights=image_weight) / image_weight.sum()
    sampler = build("cmo_weighted", num_samples=M, r=r)
    assert sampler.weighting == "image"
    assert np.allclose(sampler.class_probabilities(), expected)
    counts, draws = draw_frequencies(sampler, epoch=1)
    assert_frequencies(counts, expected, draws)


def test_cmo_default_is_uniform_over_classes_unlike_the_paper_form():
    official = build("cmo_weighted")
    paper = build("cmo_weighted", weighting="class")
    assert np.allclose(official.class_probabilities(), 1 / C)
    assert paper.class_probabilities()[-1] > 0.5  # ∝ 1/n_k puts most mass on the rarest class


@pytest.mark.parametrize("name", ["class_balanced", "square_root", "cmo_weighted", "progressive"])
def test_images_are_uniform_within_their_class(name):
    sampler = build(name, num_samples=M)
    sampler.set_epoch(6)
    idx = sampler.indices().numpy()
    per_image = np.bincount(idx, minlength=N)
    p_class = class_counts_of(idx) / M
    for j in range(C):
        members = np.flatnonzero(LABELS == j)
        within = per_image[members]
        assert_frequencies(within, np.full(len(members), 1 / len(members)), within.sum())
        assert p_class[j] > 0


def test_instance_is_a_permutation_and_longer_epochs_chain_permutations():
    sampler = InstanceSampler(LABELS, seed=1, num_samples=2 * N + 100)
    sampler.set_epoch(0)
    idx = sampler.indices().numpy()
    assert np.array_equal(np.sort(idx[:N]), np.arange(N))
    assert np.array_equal(np.sort(idx[N:2 * N]), np.arange(N))
    assert len(set(idx[2 * N:].tolist())) == 100
    short = InstanceSampler(LABELS, seed=1)
    short.set_epoch(9)
    assert np.array_equal(class_counts_of(short.indices()), COUNTS)
    assert np.allclose(short.class_probabilities(), COUNTS / N)


@pytest.mark.parametrize("name", sorted(set(ALL) - FIXED_LENGTH))
def test_epoch_length_is_configurable(name):
    sampler = build(name, num_samples=1234)
    assert len(sampler) == len(sampler.indices()) == 1234
    assert len(build(name)) == N


def test_progressive_follows_p_t_at_several_epochs():
    sampler = build("progressive", num_samples=M, ctx=context(total_epochs=10))
    for t in (0, 2, 5, 9):
        expected = (1 - t / 10) * COUNTS / N + (t / 10) / C
        counts, draws = draw_frequencies(sampler, epoch=t)
        assert np.allclose(sampler.class_probabilities(), expected)
        assert_frequencies(counts, expected, draws)


def test_deferred_progressive_starts_at_the_instance_distribution_at_its_own_start():
    sampler = build("progressive", num_samples=M, start_epoch=6, ctx=context(total_epochs=10))
    # T = 10 - 6 = 4 epochs of its own: t = 0, 1, 2, 3 at epochs 6 .. 9.
    for epoch, t in ((6, 0), (8, 2), (9, 3)):
        expected = (1 - t / 4) * COUNTS / N + (t / 4) / C
        counts, draws = draw_frequencies(sampler, epoch)
        assert np.allclose(sampler.class_probabilities(), expected)
        assert_frequencies(counts, expected, draws)
    # Not the reference flaw (global epoch / total): at epoch 6 that would be 60 % balanced.
    sampler.set_epoch(6)
    flawed = 0.4 * COUNTS / N + 0.6 / C
    assert not np.allclose(sampler.class_probabilities(), flawed, atol=0.05)


def test_progressive_needs_a_schedule_length():
    with pytest.raises(ConfigError, match="total_epochs"):
        ProgressiveSampler(LABELS)
    with pytest.warns(UserWarning, match="never leaves the instance stream"):
        never = build("progressive", start_epoch=10, ctx=context(total_epochs=10))
    never.set_epoch(9)
    assert np.allclose(never.class_probabilities(), COUNTS / N)
    by_end = ProgressiveSampler(LABELS, start_epoch=2, end_epoch=6)  # T from the window
    by_end.set_epoch(4)
    assert np.allclose(by_end.class_probabilities(), 0.5 * COUNTS / N + 0.5 / C)


def test_random_oversample_repeats_every_image_evenly_to_n_max():
    sampler = build("random_oversample")
    assert len(sampler) == C * COUNTS.max()
    first = None
    for epoch in range(3):
        sampler.set_epoch(epoch)
        idx = sampler.indices().numpy()
        assert np.array_equal(class_counts_of(idx), np.full(C, COUNTS.max()))
        per_image = np.bincount(idx, minlength=N)
        low = COUNTS.max() // COUNTS[LABELS]  # floor(n_max / n_j) for each image's class
        assert np.all((per_image == low) | (per_image == low + 1))
        first = idx if first is None else first
    assert not np.array_equal(first, idx)
    assert np.allclose(sampler.class_probabilities(), 1 / C)


def test_random_oversample_spreads_the_extra_copies_uniformly():
    labels = make_labels([10, 3])  # class 1: 3 images for 10 slots, one image gets a 4th copy
    sampler = RandomOverSampler(labels, seed=0)
    epochs = 3000
    extra = np.zeros(len(labels))
    for epoch in range(epochs):
        sampler.set_epoch(epoch)
        extra += np.bincount(sampler.indices().numpy(), minlength=len(labels)) == 4
    members = np.flatnonzero(labels == 1)
    assert_frequencies(extra[members], np.full(3, 1 / 3), epochs)


def test_random_undersample_keeps_n_min_distinct_images_per_class_redrawn_each_epoch():
    labels = make_labels([40, 10, 5])
    sampler = RandomUnderSampler(labels, seed=2)
    assert len(sampler) == 15
    epochs = 400
    seen = np.zeros(len(labels))
    for epoch in range(epochs):
        sampler.set_epoch(epoch)
        idx = sampler.indices().numpy()
        assert len(set(idx.tolist())) == 15
        assert np.array_equal(np.bincount(labels[idx], minlength=3), [5, 5, 5])
        seen += np.bincount(idx, minlength=len(labels))
    for j, n in enumerate([40, 10, 5]):
        members = np.flatnonzero(labels == j)
        # Each image of class j is kept with probability 5 / n_j per epoch, independently over
        # epochs: a binomial count per image.
        p = 5 / n
        bound = SIGMAS * math.sqrt(epochs * p * (1 - p)) + 1e-12
        assert np.all(np.abs(seen[members] - epochs * p) <= bound)


def test_balanced_epoch_samplers_have_no_num_samples():
    for name in FIXED_LENGTH:
        with pytest.raises(ConfigError, match="num_samples"):
            build(name, num_samples=100)


@pytest.mark.parametrize("name,param,value", [
    ("square_root", "q", "half"), ("square_root", "q", float("nan")), ("cmo_weighted", "r", None),
    ("cmo_weighted", "weighting", "pixel"),
])
def test_entry_specific_bad_parameters(name, param, value):
    with pytest.raises(ConfigError) as err:
        build(name, **{param: value})
    assert f"{param}" in str(err.value)


def test_extreme_powers_stay_finite():
    labels = make_labels([100_000, 1])
    sharp = SquareRootSampler(labels, q=80.0).class_probabilities()
    assert np.all(np.isfinite(sharp)) and sharp[0] > 0.999
    inverse = CMOWeightedSampler(labels, r=80.0, weighting="class").class_probabilities()
    assert np.all(np.isfinite(inverse)) and inverse[1] > 0.999


def test_direct_construction_matches_registry_build():
    direct = ClassBalancedSampler(LABELS, num_classes=C, seed=3, rank=0, world_size=1)
    built = build("class_balanced")
    direct.set_epoch(2)
    built.set_epoch(2)
    assert torch.equal(direct.indices(), built.indices())
