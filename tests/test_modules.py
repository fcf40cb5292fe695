"""The BEV modules take the env's observation space as it comes, packed or not, and learn from it."""

import numpy as np
import pytest
import torch
from ray.rllib.core.columns import Columns
from ray.rllib.core.rl_module.rl_module import RLModuleSpec

import carla_env.rllib.modules as bev_modules
from carla_env.config import load_config
from carla_env.env import CarlaEnv
from carla_env.rllib.modules import BevDQNCatalog, BevDQNModule, BevPPOCatalog, BevPPOModule, encoder_space

SMALL_BEV = {"size": 48, "pixels_per_meter": 2.0, "ego_offset": 10}
MODEL = {
    "conv_filters": [[8, [4, 4], 4], [16, [3, 3], 2]],
    "head_fcnet_hiddens": [32],
    "vf_share_layers": True,
}


@pytest.mark.parametrize("packed", [True, False])
def test_the_ppo_module_learns_from_the_bev_packed_or_not(packed):
    bev = {"type": "sensor.birdview", "packed": packed, **SMALL_BEV}
    env = CarlaEnv(
        load_config(
            "experiments/ppo/config.yaml",
            {
                "simulator": {"backend": "embedded", "traffic": {"vehicles": 5}},
                "experiment": {"sensors": {"birdview": bev}},
            },
        )
    )
    channels = env.config.experiment.sensors["birdview"].num_channels  # 15: two frames and the speed bar
    packed_bytes = (channels + 7) // 8
    assert env.observation_space.shape == (packed_bytes if packed else channels, 48, 48)
    assert encoder_space(env.observation_space).shape == (48, 48, 8 * packed_bytes if packed else channels)
    obs = [env.reset(seed=0)[0]]
    for _ in range(7):
        obs.append(env.step(env.action_space.sample())[0])
    env.close()
    module = RLModuleSpec(
        module_class=BevPPOModule,
        catalog_class=BevPPOCatalog,
        observation_space=env.observation_space,
        action_space=env.action_space,
        model_config=MODEL,
    ).build()
    batch = {Columns.OBS: torch.from_numpy(np.stack(obs))}
    out = module.forward_train(batch)
    values = module.compute_values(batch)
    assert out[Columns.ACTION_DIST_INPUTS].shape == (8, 4) and values.shape == (8,)
    loss = out[Columns.ACTION_DIST_INPUTS].pow(2).mean() + values.pow(2).mean()
    loss.backward()
    first_conv = next(p for n, p in module.named_parameters() if p.ndim == 4)
    assert first_conv.grad is not None and first_conv.grad.abs().sum() > 0
    inference = module.forward_inference({Columns.OBS: batch[Columns.OBS][:1]})
    assert torch.isfinite(inference[Columns.ACTION_DIST_INPUTS]).all()


@pytest.mark.parametrize("kind", ["ppo", "dqn"])
def test_dropping_rllibs_zero_width_pads_changes_no_output_and_no_checkpoint_key(kind, monkeypatch):
    """The shipped configs' first conv (4x4, stride 4) gets a ZeroPad2d of width 0 from RLlib's "same"
    padding; the modules drop it. Same weights, same outputs, same state-dict keys as RLlib's layers."""
    import gymnasium as gym

    module_class, catalog = (BevPPOModule, BevPPOCatalog) if kind == "ppo" else (BevDQNModule, BevDQNCatalog)
    space = gym.spaces.Box(0, 255, (2, 64, 64), np.uint8)
    actions = gym.spaces.Box(-1.0, 1.0, (2,), np.float32) if kind == "ppo" else gym.spaces.Discrete(15)
    model = {"conv_filters": [[16, [4, 4], 4], [32, [3, 3], 2], [64, [3, 3], 2]], "head_fcnet_hiddens": [32]}
    if kind == "dqn":
        model.update(dueling=True, double_q=True, num_atoms=1, epsilon=[[0, 0.0]])

    def build():
        return RLModuleSpec(
            module_class=module_class,
            catalog_class=catalog,
            observation_space=space,
            action_space=actions,
            model_config=model,
        ).build()

    ours = build()
    monkeypatch.setattr(bev_modules, "drop_noop_padding", lambda module: None)
    rllibs = build()
    pads = [m for m in rllibs.modules() if isinstance(m, torch.nn.ZeroPad2d)]
    assert any(not any(p.padding) for p in pads)  # RLlib's layers have one to drop
    assert not any(isinstance(m, torch.nn.ZeroPad2d) and not any(m.padding) for m in ours.modules())
    assert any(isinstance(m, torch.nn.ZeroPad2d) for m in ours.modules())  # the real pads stay
    assert ours.state_dict().keys() == rllibs.state_dict().keys()
    rllibs.load_state_dict(ours.state_dict())
    obs = {Columns.OBS: torch.randint(0, 256, (4, *space.shape), dtype=torch.uint8)}
    with torch.no_grad():
        if kind == "ppo":
            a, b = (m.forward_exploration(obs)[Columns.ACTION_DIST_INPUTS] for m in (ours, rllibs))
        else:
            a, b = (m.compute_q_values(obs)["qf_preds"] for m in (ours, rllibs))
    assert torch.equal(a, b)
