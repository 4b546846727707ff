import threading

import numpy as np

from noisesearch_server.rng import ancestral_stream, base_noise, renoise_eps, standard_normal


def fresh_philox_normal(seed: int, domain: int, dim: int) -> np.ndarray:
    """The contract's draws, from a Philox built for the purpose."""
    return np.random.Generator(np.random.Philox(key=np.array([seed, domain], dtype=np.uint64))).standard_normal(dim)


def test_rekeyed_draws_are_a_fresh_philox_whatever_was_drawn_before():
    rng = np.random.default_rng(2)
    for _ in range(500):
        seed, domain, dim = int(rng.integers(0, 2**63)) * int(rng.integers(1, 3)), int(rng.integers(0, 4)), int(rng.integers(1, 40))
        assert standard_normal(seed, domain, dim).tobytes() == fresh_philox_normal(seed, domain, dim).tobytes()
    assert base_noise(2**64 - 1, 5).tobytes() == fresh_philox_normal(2**64 - 1, 0, 5).tobytes()
    assert renoise_eps(7, 3).tobytes() == fresh_philox_normal(7, 2, 3).tobytes()


def test_threads_drawing_at_once_each_get_their_own_streams():
    expected = {seed: fresh_philox_normal(seed, 0, 16).tobytes() for seed in range(200)}
    mismatches = []

    def draw(offset: int) -> None:
        for _ in range(20):
            for seed in range(offset, 200, 4):
                if base_noise(seed, 16).tobytes() != expected[seed]:
                    mismatches.append(seed)

    threads = [threading.Thread(target=draw, args=(offset,)) for offset in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not any(thread.is_alive() for thread in threads)
    assert mismatches == []


def test_an_ancestral_stream_is_its_own_generator():
    first, second = ancestral_stream(3), ancestral_stream(3)
    first.standard_normal(5)
    base_noise(9, 16)
    assert second.standard_normal(5).tobytes() == fresh_philox_normal(3, 3, 5).tobytes()
