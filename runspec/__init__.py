"""The run spec: the public contract shared by the pages, the REST API and the workers.

Pure pydantic. Nothing here imports torch at module level, so the web process can validate specs;
each method module imports peft lazily inside the function that builds the model.
"""

from runspec.methods import METHODS, AnyMethod, MethodSpec
from runspec.spec import DatasetSpec, PlacementSpec, RunSpec, TrainingSpec

__all__ = ["METHODS", "AnyMethod", "DatasetSpec", "MethodSpec", "PlacementSpec", "RunSpec", "TrainingSpec"]
