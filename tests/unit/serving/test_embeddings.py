"""The embeddings server on the real bundled all-MiniLM-L6-v2 (no Ray)."""

import pytest

from deployments.embeddings.server import EmbeddingServer
from deployments.errors import InvalidRequestError, RequestTooLargeError


@pytest.fixture(scope="module")
def server():
    return EmbeddingServer({"max_texts": 4, "max_chars": 200})


def test_real_model_embeds_and_similar_texts_are_closer(server):
    out = server.embed_sync({"texts": ["Flood hits the city centre", "Storm floods the town", "Election results are in"]})
    assert out.dimensions == 384 and len(out.vectors) == 3
    import numpy as np

    v = np.array(out.vectors)
    assert np.allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    assert v[0] @ v[1] > v[0] @ v[2] + 0.3


@pytest.mark.parametrize("body, error", [
    ({"texts": []}, InvalidRequestError),
    ({"texts": "not a list"}, InvalidRequestError),
    ({"texts": ["a"], "extra": 1}, InvalidRequestError),
    ({"texts": ["a"] * 5}, RequestTooLargeError),
    ({"texts": ["x" * 201]}, RequestTooLargeError),
])
def test_bad_requests_get_clear_errors(server, body, error):
    with pytest.raises(error):
        server.embed_sync(body)
