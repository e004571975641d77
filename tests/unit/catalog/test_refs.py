"""ModelRef parsing: accepted forms, normalization, refusals, and round-trip properties."""

from __future__ import annotations

import pytest
from hypothesis import given

from llama_orch.catalog.refs import (
    FileRef,
    HfRef,
    ModelRef,
    OciRef,
    S3Ref,
    UrlRef,
    format_ref,
    parse_ref,
    ref_id,
)
from llama_orch.errors import InvalidModelRef
from tests.unit.catalog.ref_strategies import model_refs


class TestParse:
    @pytest.mark.parametrize(
        ("text", "expected"),
        [
            ("hf:org/repo", HfRef("org", "repo")),
            ("hf:org/repo@v1.0", HfRef("org", "repo", "v1.0")),
            ("hf:TheBloke/M-7B-GGUF/q4/m.gguf", HfRef("TheBloke", "M-7B-GGUF", None, "q4/m.gguf")),
            ("hf:o/r@main/m.gguf", HfRef("o", "r", "main", "m.gguf")),
            ("file:/models/a/../b.gguf", FileRef("/models/b.gguf")),
            ("/models/b.gguf", FileRef("/models/b.gguf")),
            ("HTTPS://Example.COM:443/m.gguf", UrlRef("https://example.com/m.gguf")),
            ("http://127.0.0.1:8000/x?y=1#frag", UrlRef("http://127.0.0.1:8000/x?y=1")),
            ("s3://bucket-1/dir/m.gguf", S3Ref("bucket-1", "dir/m.gguf")),
            ("oci://Reg.io:5000/ns/model:q4", OciRef("reg.io:5000", "ns/model", "q4")),
            ("oci://reg.io/ns/model", OciRef("reg.io", "ns/model", "latest")),
            (
                "oci://reg.io/m@sha256:" + "a" * 64,
                OciRef("reg.io", "m", None, "sha256:" + "a" * 64),
            ),
        ],
    )
    def test_accepted_forms(self, text: str, expected: ModelRef) -> None:
        """Each accepted form parses to its normalized variant."""
        assert expected == parse_ref(text)

    @pytest.mark.parametrize("text", ["~/models/m.gguf", "file:~/models/m.gguf"])
    def test_a_home_path_is_the_home_folder(
        self, text: str, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """``~`` is the user's home, as in the config's paths, not a folder beside the config."""
        monkeypatch.setenv("HOME", "/home/ops")
        assert FileRef("/home/ops/models/m.gguf") == parse_ref(text, base_dir="/etc/llorch")

    def test_relative_path_resolves_against_base(self) -> None:
        """A bare relative path is a file next to the config file."""
        assert FileRef("/etc/llorch/models/m.gguf") == parse_ref(
            "models/m.gguf", base_dir="/etc/llorch"
        )

    @pytest.mark.parametrize(
        "text",
        [
            "hf:org",
            "hf:org/repo/../../etc/passwd",
            "hf:org/repo//x",
            "hf:or g/repo",
            "s3://B/key",
            "s3://bucket",
            "s3://bucket/a/../../b",
            "oci://reg.io/Upper:tag",
            "oci://reg.io/m@sha256:short",
            "https://user:pw@host/x",
            "https:///nohost",
            "https://host/a/../b",
            "https://[::1",
            "https://[zz]/x",
            "ftp://host/x",
            "relative/without/base",
        ],
    )
    def test_refused_forms_name_the_accepted_ones(self, text: str) -> None:
        """A bad ref is a typed INVALID_PARAMS error whose hint lists the accepted forms."""
        with pytest.raises(InvalidModelRef) as info:
            parse_ref(text)
        assert "hf:org/repo" in (info.value.hint or "")
        assert "INVALID_PARAMS" == info.value.envelope()["code"]

    def test_url_id_drops_the_query(self) -> None:
        """A URL's query (which may carry a token) never reaches the catalog id."""
        assert "https://h.io/m.gguf" == ref_id(parse_ref("https://h.io/m.gguf?token=abc"))


class TestRoundTrip:
    @given(model_refs)
    def test_parse_format_round_trips(self, ref: ModelRef) -> None:
        """Formatting a ref and parsing the text gives the same ref."""
        assert ref == parse_ref(format_ref(ref))

    @given(model_refs)
    def test_ids_are_stable(self, ref: ModelRef) -> None:
        """The id of a ref parsed from its id is the same id."""
        assert ref_id(ref) == ref_id(parse_ref(ref_id(ref)))


@pytest.mark.parametrize(
    "text",
    [
        "hf:org/repo/" + "m" * 241,
        "s3://bucket/dir/" + "é" * 121,
        "hf:org/repo/d/" + "x" * 300 + "/m",
    ],
)
def test_a_name_longer_than_a_file_name_may_be_is_refused(text: str) -> None:
    """Names past 240 bytes (NAME_MAX less a download's suffixes) cannot be staged."""
    with pytest.raises(InvalidModelRef, match="at most 240"):
        parse_ref(text)
