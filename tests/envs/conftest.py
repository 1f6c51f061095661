"""Fixtures shared by the simulator tests."""

import mujoco
import pytest


@pytest.fixture
def overflow_model() -> mujoco.MjModel:
    """A free body carrying a chain of 60 ball joints: MjData fits MuJoCo's 300K arena, but the
    constraint solver overflows its stack once the chain falls on the plane (a MuJoCo fatal
    error, within 500 steps of 2 ms)."""
    chain = '<body pos="0 0 .1"><joint type="ball"/><geom size=".05"/>' * 60 + "</body>" * 60
    xml = ('<mujoco><size memory="300K"/><worldbody><geom type="plane" size="5 5 .1"/>'
           f'<body pos="0 0 3"><freejoint/><geom size=".05"/>{chain}</body></worldbody>'
           '</mujoco>')
    return mujoco.MjModel.from_xml_string(xml)
