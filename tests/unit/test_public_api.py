"""The curated public API stays honest: everything in __all__ exists, and nothing private leaks."""

import types

import lakeinfer


def test_all_names_exist_and_are_public() -> None:
    for name in lakeinfer.__all__:
        assert hasattr(lakeinfer, name), name
    assert len(set(lakeinfer.__all__)) == len(lakeinfer.__all__)
    # submodules become attributes once imported anywhere; they are namespaces, not the curated API
    public = {n for n, v in vars(lakeinfer).items() if not n.startswith("_") and not isinstance(v, types.ModuleType)}
    assert public <= set(lakeinfer.__all__), public - set(lakeinfer.__all__)


def test_every_error_derives_from_the_base() -> None:
    for name in lakeinfer.__all__:
        obj = getattr(lakeinfer, name)
        if isinstance(obj, type) and issubclass(obj, Exception):
            assert issubclass(obj, lakeinfer.LakeinferError), name
