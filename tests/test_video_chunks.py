"""Encoding a video a few temporal grids at a time gives the embeddings of the one-call encoding."""

from __future__ import annotations

import pytest
import torch

from fusion.model.video_chunks import encode_video_in_chunks
from fusion.testing import random_inputs


@pytest.fixture(scope="module")
def two_videos(tiny):
    """A batch of two clips of different lengths (7 and 4 temporal grids) and the one-call embeddings."""
    model, _ = tiny
    long, short = (random_inputs(model, seconds=s, seed=s) for s in (7, 4))
    pixels = torch.cat([long["pixel_values_videos"], short["pixel_values_videos"]])
    grid = torch.cat([long["video_grid_thw"], short["video_grid_thw"]])
    assert grid[:, 0].tolist() == [7, 4]

    def encode(p, g):
        return torch.cat(model.model.get_video_features(p, g).pooler_output)

    with torch.no_grad():
        whole = encode(pixels, grid)
    return encode, pixels, grid, whole


@pytest.mark.parametrize("chunk", [1, 2, 3, 6])
def test_chunked_encoding_equals_the_one_call_encoding(two_videos, chunk):
    encode, pixels, grid, whole = two_videos
    calls = []

    def counting(p, g):
        calls.append(g[0].tolist())
        return encode(p, g)

    with torch.no_grad():
        chunked = encode_video_in_chunks(counting, pixels, grid, chunk)
    assert chunked.shape == whole.shape
    torch.testing.assert_close(chunked, whole, rtol=1e-5, atol=1e-6)
    h, w = grid[0, 1:].tolist()
    expected = [[min(chunk, t - t0), h, w] for t in (7, 4) for t0 in range(0, t, chunk)]
    assert calls == expected  # never more than `chunk` grids per call, every grid once, in order


def test_no_chunking_when_every_video_fits(two_videos):
    encode, pixels, grid, whole = two_videos
    calls = []
    with torch.no_grad():
        out = encode_video_in_chunks(lambda p, g: calls.append(1) or encode(p, g), pixels, grid, 8)
    assert calls == [1] and torch.equal(out, whole)


def test_the_thinker_encodes_in_chunks_with_the_same_logits(tiny):
    model, _ = tiny
    inputs = random_inputs(model, seconds=6, seed=1)
    saved = model.video_chunk_grids
    try:
        with torch.no_grad():
            model.video_chunk_grids = None
            whole = model(**inputs).logits
            model.video_chunk_grids = 2
            chunked = model(**inputs).logits
    finally:
        model.video_chunk_grids = saved
    torch.testing.assert_close(chunked, whole, rtol=1e-4, atol=1e-5)


def test_a_chunk_below_one_grid_is_a_config_error(two_videos):
    from fusion.errors import ConfigError

    encode, pixels, grid, _ = two_videos
    with pytest.raises(ConfigError, match="video_chunk_grids must be an integer >= 1"):
        encode_video_in_chunks(encode, pixels, grid, 0)
