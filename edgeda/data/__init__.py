"""Domains: built-in generators, user folders and ``.npz`` files, transforms."""
from .builtin import BUILTIN_DOMAINS, DIGIT_CLASSES
from .domain import Domain, LoadReport
from .spec import DomainSpec, load_domain, save_images
from . import detection_spec  # noqa: E402,F401 - registers the detection loader

__all__ = ["BUILTIN_DOMAINS", "DIGIT_CLASSES", "Domain", "LoadReport", "DomainSpec", "load_domain", "save_images"]
