"""Hypothesis strategies for model refs."""

from __future__ import annotations

from hypothesis import strategies as st

from llama_orch.catalog.refs import FileRef, HfRef, ModelRef, OciRef, S3Ref, UrlRef

_alnum = "abcdefghijklmnopqrstuvwxyz0123456789"
_name_chars = _alnum + "ABCXYZ._-"


def _word(chars: str, first: str = _alnum, max_size: int = 12) -> st.SearchStrategy[str]:
    return st.builds(lambda a, b: a + b, st.sampled_from(first), st.text(chars, max_size=max_size))


_segment = _word(_alnum + "._-").filter(lambda s: s not in (".", ".."))
_rel_path = st.lists(_segment, min_size=1, max_size=4).map("/".join)
_host = st.lists(_word(_alnum, max_size=8), min_size=1, max_size=3).map(".".join)
_port = st.one_of(st.none(), st.integers(1, 65535).filter(lambda p: p not in (80, 443)))


@st.composite
def _url(draw: st.DrawFn) -> UrlRef:
    scheme = draw(st.sampled_from(("http", "https")))
    port = draw(_port)
    netloc = draw(_host) + (f":{port}" if port else "")
    query = draw(st.sampled_from(("", "download=true")))
    return UrlRef(f"{scheme}://{netloc}/{draw(_rel_path)}" + (f"?{query}" if query else ""))


_oci_component = st.lists(_word(_alnum, max_size=6), min_size=1, max_size=3).map("-".join)

model_refs: st.SearchStrategy[ModelRef] = st.one_of(
    st.builds(
        HfRef,
        _word(_name_chars),
        _word(_name_chars),
        st.one_of(st.none(), _word(_name_chars)),
        st.one_of(st.none(), _rel_path),
    ),
    st.builds(lambda p: FileRef("/" + p), _rel_path),
    _url(),
    st.builds(S3Ref, _word(_alnum + ".-", max_size=20).map(lambda b: b + "xx"), _rel_path),
    st.builds(
        lambda reg, port, repo, tag: OciRef(reg + (f":{port}" if port else ""), repo, tag, None),
        _host,
        _port,
        st.lists(_oci_component, min_size=1, max_size=3).map("/".join),
        _word(_alnum + "._-"),
    ),
    st.builds(
        lambda reg, repo, hexd: OciRef(reg, repo, None, f"sha256:{hexd}"),
        _host,
        _oci_component,
        st.text("0123456789abcdef", min_size=64, max_size=64),
    ),
)
