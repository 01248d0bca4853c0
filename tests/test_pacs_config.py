"""The [pacs] settings: TOML < environment < flags like every key, one-line errors naming the key,
and `medge edge check` echoing the real PACS (Orthanc) the results would go to."""
from __future__ import annotations

import pytest
from click.testing import CliRunner

from medge.edge.config import load_config
from medge.edge.errors import ConfigError
from medge.main import cli

pytestmark = pytest.mark.timeout(180)


def test_pacs_keys_come_from_toml_environment_and_flags(tmp_path):
    (tmp_path / "edge.toml").write_text('[pacs]\ncstore = "PACS@10.0.0.5:104"\nstow = "http://pacs:8042/dicom-web"\n'
                                        'outputs = ["sr"]\nretry_max_s = 300\ncalling_ae = "XRAY2"\n')
    config = load_config(tmp_path / "edge.toml", env={"MEDGE_PACS_RETRY_MIN_S": "5"})
    assert config.pacs.cstore == "PACS@10.0.0.5:104" and config.pacs.stow == "http://pacs:8042/dicom-web"
    assert config.pacs.outputs == ["sr"] and config.pacs.retry_min_s == 5.0 and config.pacs.retry_max_s == 300.0
    assert config.pacs.calling_ae == "XRAY2"
    flagged = load_config(tmp_path / "edge.toml", env={}, flags={"pacs.cstore": "ORTHANC@127.0.0.1:4242"})
    assert flagged.pacs.cstore == "ORTHANC@127.0.0.1:4242"
    default = load_config(env={})
    assert default.pacs.cstore is None and default.pacs.stow is None and default.pacs.outputs == ["sr", "sc"]


@pytest.mark.parametrize("flags, key", [
    ({"pacs.cstore": "127.0.0.1:104"}, "pacs.cstore"),
    ({"pacs.cstore": "PACS@host:99999"}, "pacs.cstore"),
    ({"pacs.cstore": "THIS_AE_TITLE_IS_TOO_LONG@host:104"}, "pacs.cstore"),
    ({"pacs.stow": "pacs:8042/dicom-web"}, "pacs.stow"),
    ({"pacs.outputs": "sr,pdf"}, "pacs.outputs"),
    ({"pacs.retry_min_s": "0"}, "pacs.retry_min_s"),
])
def test_bad_pacs_values_are_refused_naming_the_key(flags, key):
    with pytest.raises(ConfigError) as error:
        load_config(env={}, flags=flags)
    assert str(error.value).startswith(key + ":")


def test_a_bad_pacs_address_on_the_command_line_is_one_line_and_non_zero(tmp_path):
    result = CliRunner().invoke(cli, ["edge", "run", str(tmp_path), "--watch", str(tmp_path), "--pacs", "nowhere"])
    assert result.exit_code != 0
    assert "pacs.cstore: 'nowhere' must look like AE_TITLE@HOST:PORT" in result.output
    assert "Traceback" not in result.output


def test_edge_check_echoes_the_pacs(orthanc, tmp_path):
    args = ["edge", "check", str(tmp_path / "no-bundle"), "--watch", str(tmp_path / "in"),
            "--state-dir", str(tmp_path / "state"), "--pacs", orthanc.address, "--stow", orthanc.dicomweb_url]
    result = CliRunner().invoke(cli, args)
    line = next(line for line in result.output.splitlines() if " pacs: " in line)
    assert line == (f"ok   pacs: C-ECHO to {orthanc.address} answered Success; "
                    f"DICOMweb at {orthanc.dicomweb_url} answered HTTP 200"), result.output
    orthanc.stop()
    result = CliRunner().invoke(cli, args)
    line = next(line for line in result.output.splitlines() if " pacs: " in line)
    assert line.startswith(f"FAIL pacs: C-ECHO: PACS {orthanc.address} cannot be reached")
    assert "STOW-RS" in line and result.exit_code == 1
