"""The engine on CUDA gives the CPU engine's numbers (run with `nox -s gpu` on a GPU machine)."""

import pytest
import torch
from _adapters import build_zoo

from zoo.blend import Blend
from zoo.engine import Engine, SamplingParams

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def zoo(tmp_path_factory, tiny_model_dir):
    return build_zoo(tmp_path_factory.mktemp("gpu-zoo"), tiny_model_dir)


@pytest.mark.parametrize("method", ["live", "ties", "product"])
def test_cuda_blend_matches_cpu(zoo, method):
    blend = Blend.from_weights({"alice": 0.7, "bob": -0.4}, method=method)
    cpu = Engine(zoo, device="cpu").next_token_logprobs(blend, "My dream is")
    cuda = Engine(zoo, device="cuda").next_token_logprobs(blend, "My dream is")
    assert cuda.device.type == "cuda"
    assert torch.allclose(cpu, cuda.cpu(), atol=1e-3)


def test_cuda_greedy_generation_matches_cpu(zoo):
    blend = Blend.from_weights({"alice": 1.0, "carol": 0.5})
    params = SamplingParams(max_new_tokens=12, temperature=0.0, stop_at_newline=False)
    cpu = Engine(zoo, device="cpu").generate(blend, "My dream is", params)
    cuda = Engine(zoo, device="cuda").generate(blend, "My dream is", params)
    assert [s.text for s in cuda] == [s.text for s in cpu]
