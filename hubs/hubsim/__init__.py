"""The reference hub (simulator) for hub protocol v1, and a misbehaving one for tests."""

from .protocol import ALL_METHODS
from .server import HubServer, run, serve_in_thread
from .state import HubState
from .tree import DEMO_TREE, demo_tree

__all__ = ["ALL_METHODS", "DEMO_TREE", "HubServer", "HubState", "demo_tree", "run", "serve_in_thread"]
