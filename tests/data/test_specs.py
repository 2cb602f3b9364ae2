"""Every dataset's spec names a file layout and registries that the readers and fetchers know."""
import pytest

from minisdit.data import DATASET_SPECS, datasets, fetch


@pytest.mark.parametrize("name", sorted(DATASET_SPECS))
def test_every_layout_and_registry_is_handled(name):
    spec = DATASET_SPECS[name]
    for table in (datasets.READERS, fetch.MIRROR_FETCHERS, fetch.LOCAL_COPIERS, fetch.SUPPLY_HINTS):
        assert spec.layout in table
    assert all(registry in fetch.REGISTRY_SOURCES for registry in spec.registries)
    sources = fetch.sources_for(name, file="/somewhere")
    assert len(sources) == 1 + len(spec.mirrors) + len(spec.registries)
    assert sources[0].description == "local copy /somewhere"


def test_the_hint_after_every_failure_fits_the_layout(tmp_path):
    archive_hint = fetch.SUPPLY_HINTS["cifar-binary"](DATASET_SPECS["cifar10"], tmp_path)
    assert "--file /path/to/cifar-10-binary.tar.gz" in archive_hint and DATASET_SPECS["cifar10"].mirrors[0] in archive_hint
    idx_hint = fetch.SUPPLY_HINTS["idx"](DATASET_SPECS["fashion-mnist"], tmp_path)
    assert "fetch fashion-mnist --file /path/to/folder" in idx_hint
