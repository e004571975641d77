from __future__ import annotations

import os
import ssl
from pathlib import Path

import pytest
import trustme

from llama_orch.config import load_settings, parse_config_text, read_config_file, resolve_path
from llama_orch.errors import ConfigError
from llama_orch.provisioners.factory import tls_context

EXAMPLES = sorted(Path(__file__).resolve().parents[3].joinpath("examples").glob("*.yaml"))

#: A whole sha256 pin (what binary.checksum and container.digest must be).
PIN = "sha256:" + "0" * 64

MINIMAL = """
gpus: {simulated: [{index: 0, name: sim, vram_mb: 1024}]}
pools:
  - {id: p0, engine: mock, model: m0}
"""


def issues_of(text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config_text(text, "test.yaml")
    return [str(issue) for issue in info.value.issues]


class TestExamples:
    @pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
    def test_example_validates(self, path: Path) -> None:
        """Every shipped example config validates cleanly (OC-CONFIG-6002)."""
        config = read_config_file(path)
        assert config.pools

    def test_examples_exist(self) -> None:
        """The demo config the Makefile serves is among the examples."""
        assert "demo.yaml" in [p.name for p in EXAMPLES]


class TestStrictValidation:
    def test_unknown_key_names_its_path(self) -> None:
        """A misspelt key is rejected with the exact path of the offending key."""
        problems = issues_of(MINIMAL.replace("model: m0}", "model: m0, slotz: 2}"))
        assert [
            "pools.0.slotz: unknown key (check the spelling; see contracts/config.schema.json)"
        ] == problems

    def test_wrong_type_names_its_path(self) -> None:
        """A wrong type names the key and what was expected."""
        problems = issues_of(MINIMAL.replace("model: m0}", "model: m0, slots: many}"))
        assert 1 == len(problems)
        assert problems[0].startswith("pools.0.slots: ")

    def test_a_yaml_boolean_or_number_where_text_goes_says_to_quote_it(self) -> None:
        """`model: no` or `id: 1` are a boolean and a number to YAML; the message says so."""
        problems = issues_of(
            MINIMAL.replace("{id: p0, engine: mock, model: m0}", "{id: 1, engine: mock, model: no}")
        )
        assert [
            "pools.0.id: Input should be a valid string; YAML read it as the int 1: quote it",
            "pools.0.model: Input should be a valid string; YAML read it as the bool False: "
            "quote it",
        ] == problems

    def test_a_quoted_number_or_boolean_says_to_remove_the_quotes(self) -> None:
        """`slots: "4"` is text to YAML; it is refused with its key and line, not coerced."""
        text = MINIMAL.replace("model: m0}", "model: m0, slots: \"4\", mock: {healthy: 'no'}}")
        line = 1 + text.splitlines().index(next(x for x in text.splitlines() if "slots" in x))
        assert [
            f"pools.0.slots: an integer goes here, but line {line} quotes it as the text '4': "
            "remove the quotes",
            f"pools.0.mock.healthy: true or false goes here, but line {line} quotes it as the "
            "text 'no': remove the quotes",
        ] == issues_of(text)

    def test_a_quoted_number_merged_in_is_found_where_it_is_written(self) -> None:
        """A value that comes from a merge key (`<<: *base`) is named at the anchor's line."""
        text = MINIMAL.replace(
            "  - {id: p0, engine: mock, model: m0}",
            "  - &base {id: p0, engine: mock, model: m0, slots: '2'}\n"
            "  - {<<: *base, id: p1, model: m1}",
        )
        assert 2 * [
            "an integer goes here, but line 4 quotes it as the text '2': remove the quotes"
        ] == [problem.split(": ", 1)[1] for problem in issues_of(text)]

    def test_a_quoted_float_in_a_list_is_named_by_its_index(self) -> None:
        """Lists are walked too; the index is in the key (other problems still come along)."""
        text = MINIMAL.replace("model: m0}", "model: m0, devices: [0], tensor_split: ['2.5']}")
        problems = issues_of(text)
        assert problems[0].startswith("pools.0.tensor_split.0: a number goes here, but line ")

    def test_a_quoted_number_is_listed_with_the_other_problems(self) -> None:
        """Every problem of a file is listed at once: a quoted number next to an unknown key."""
        text = MINIMAL.replace(
            "model: m0}", "model: m0, slots: '4', slotz: 2, queue: {capacity: 0}}"
        )
        problems = issues_of(text)
        assert "pools.0.slotz: unknown key" in " ".join(problems)
        assert "pools.0.queue.capacity: Input should be greater than 0" in problems
        assert [
            p for p in problems if p.startswith("pools.0.slots: an integer goes here, but line ")
        ]

    def test_enum_lists_allowed_values(self) -> None:
        """An unknown engine lists the engines that are allowed."""
        problems = issues_of(MINIMAL.replace("engine: mock", "engine: cuda-magic"))
        assert 1 == len(problems)
        assert "'llamacpp'" in problems[0] and "cuda-magic" in problems[0]

    def test_impossible_values_are_rejected(self) -> None:
        """Zero capacity, duplicate pool ids and unknown devices are impossible values."""
        text = """
gpus: {simulated: [{index: 0, name: sim, vram_mb: 1024}]}
pools:
  - {id: p0, engine: mock, model: m0, queue: {capacity: 0}}
"""
        assert ["pools.0.queue.capacity: Input should be greater than 0"] == issues_of(text)
        dup = MINIMAL + "  - {id: p0, engine: mock, model: m1}\n"
        assert any("repeated: ['p0']" in p for p in issues_of(dup))
        devices = MINIMAL.replace("model: m0}", "model: m0, devices: [3]}")
        assert any("devices [3]" in p for p in issues_of(devices))

    def test_external_engine_needs_endpoint(self) -> None:
        """An external engine pool without an endpoint says what is missing."""
        text = MINIMAL.replace(
            "{id: p0, engine: mock, model: m0}",
            "{id: p0, engine: llamacpp, model: 'hf:a/b', provisioning: {mode: external}}",
        )
        assert any("requires endpoint" in p for p in issues_of(text))

    @pytest.mark.parametrize(
        ("endpoint", "says"),
        [
            ("http://[::1", "not a valid URL"),
            ("http://host:99999", "not a valid URL"),
            ("ftp://host", "http:// or https:// URL"),
            ("http://:8000", "http:// or https:// URL with a host"),
        ],
    )
    def test_a_malformed_endpoint_is_refused_at_load(self, endpoint: str, says: str) -> None:
        """An endpoint no client could reach fails validation, not the server's start-up."""
        text = MINIMAL.replace(
            "{id: p0, engine: mock, model: m0}",
            f"{{id: p0, engine: vllm, model: m0, endpoint: '{endpoint}', "
            "provisioning: {mode: external}}",
        )
        problems = issues_of(text)
        assert 1 == len(problems) and problems[0].startswith("pools.0: endpoint:")
        assert says in problems[0]
        catalog = MINIMAL + f"catalog: {{hf_endpoint: '{endpoint}'}}\n"
        assert ["catalog.hf_endpoint"] == [p.split(":")[0] for p in issues_of(catalog)]

    @pytest.mark.parametrize(
        ("engine", "workloads", "unserved"),
        [
            ("triton", "[completion, embedding]", "['embedding']"),
            ("openai", "[rerank]", "['rerank']"),
        ],
    )
    def test_workloads_the_engine_has_no_route_for_are_refused(
        self, engine: str, workloads: str, unserved: str
    ) -> None:
        """A pool cannot list a workload its engine's adapter refuses every task of."""
        text = MINIMAL.replace(
            "{id: p0, engine: mock, model: m0}",
            f"{{id: p0, engine: {engine}, model: m0, endpoint: 'http://h:1', "
            f"supported_workloads: {workloads}, provisioning: {{mode: external}}}}",
        )
        problems = issues_of(text)
        assert 1 == len(problems) and f"supported_workloads lists {unserved}" in problems[0]
        assert f"cannot route to {engine} engines;" in problems[0]

    def test_upstream_connections_cover_the_slots(self) -> None:
        """Unset, http.max_connections is slots + 8; set below slots, it is refused."""
        derived = MINIMAL.replace("model: m0}", "model: m0, slots: 300}")
        assert 308 == parse_config_text(derived, "t.yaml").pools[0].max_connections
        explicit = MINIMAL.replace("model: m0}", "model: m0, http: {max_connections: 5}}")
        assert 5 == parse_config_text(explicit, "t.yaml").pools[0].max_connections
        short = MINIMAL.replace("model: m0}", "model: m0, slots: 8, http: {max_connections: 4}}")
        assert any("is below slots" in p for p in issues_of(short))

    def test_a_pool_budget_is_a_limit_unlimited_or_inherited(self) -> None:
        """A pool's budget key is a limit, ``unlimited`` (off, whatever the server sets) or
        null (the server's); the ambiguous spellings are refused with the two that exist."""
        pool = "model: m0, budgets: {%s}}"
        for value, expected in (("unlimited", "unlimited"), ("null", None), ("30", 30)):
            text = MINIMAL.replace("model: m0}", pool % f"tokens: {value}")
            budgets = parse_config_text(text, "t.yaml").pools[0].budgets
            assert budgets is not None and expected == budgets.tokens
        for key, value in (
            ("tokens", "0"),
            ("tokens", "off"),
            ("tokens", "none"),
            ("tokens", "2.5"),
            ("time_ms", "-1"),
            ("cost", "no"),
        ):
            text = MINIMAL.replace("model: m0}", pool % f"{key}: {value}")
            [problem] = issues_of(text)
            assert problem.startswith(f"pools.0.budgets.{key}: expected ")
            assert "unlimited (no budget) or null" in problem

    def test_yaml_syntax_error_has_position(self) -> None:
        """Broken YAML reports the line and column, not a traceback."""
        problems = issues_of("pools: [\n  {id: p0,\n")
        assert problems[0].startswith("line ")

    def test_not_a_mapping(self) -> None:
        """A file that is not a mapping says what shape is expected."""
        assert ["<root>: expected a mapping with a pools: key"] == issues_of("- 1\n- 2\n")


class TestCertificateFiles:
    def test_unloadable_tls_and_ca_files_name_their_keys(self, tmp_path: Path) -> None:
        """A missing certificate or CA file is a config error at load, not a start-up crash."""
        (tmp_path / "junk.pem").write_text("not a certificate\n")
        path = tmp_path / "llorch.yaml"
        path.write_text(
            MINIMAL
            + "server: {tls: {certfile: cert.pem, keyfile: key.pem}}\n"
            + "catalog: {trust_policy: {ca_roots: [/nonexistent/ca.pem, "
            + f"{tmp_path / 'junk.pem'}]}}}}\n"
        )
        with pytest.raises(ConfigError) as info:
            load_settings({}, path)
        problems = [str(issue) for issue in info.value.issues]
        assert [
            "server.tls",
            "catalog.trust_policy.ca_roots.0",
            "catalog.trust_policy.ca_roots.1",
        ] == [p.split(":")[0] for p in problems]
        assert f"certificate {tmp_path / 'cert.pem'}" in problems[0]

    def test_relative_certificate_paths_resolve_against_the_config_file(
        self, tmp_path: Path
    ) -> None:
        ca = trustme.CA()
        ca.issue_cert("127.0.0.1").private_key_and_cert_chain_pem.write_to_path(
            str(tmp_path / "server.pem")
        )
        ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
        path = tmp_path / "llorch.yaml"
        path.write_text(
            MINIMAL
            + "server: {tls: {certfile: server.pem, keyfile: server.pem}}\n"
            + f"catalog: {{trust_policy: {{ca_roots: [{tmp_path / 'ca.pem'}]}}}}\n"
        )
        assert not (Path.cwd() / "server.pem").exists()
        settings = load_settings({}, path)  # loads the pair, so a wrong base fails here
        tls = settings.config.server.tls
        assert tls is not None
        served = [resolve_path(p, settings.base_dir) for p in (tls.certfile, tls.keyfile)]
        assert [tmp_path / "server.pem"] * 2 == served

    def test_relative_ca_roots_resolve_against_the_config_file(self, tmp_path: Path) -> None:
        """A relative CA file is found beside the config, not in the working directory, and is
        made absolute at load so the fetchers that read it later get the same file."""
        ca = trustme.CA()
        folder = tmp_path / "conf"
        (folder / "certs").mkdir(parents=True)
        ca.cert_pem.write_to_path(str(folder / "certs" / "ca.pem"))
        path = folder / "llorch.yaml"
        path.write_text(MINIMAL + "catalog: {trust_policy: {ca_roots: [certs/ca.pem]}}\n")
        assert not (Path.cwd() / "certs" / "ca.pem").exists()

        roots = load_settings({}, path).config.catalog.trust_policy.ca_roots
        assert [str(folder / "certs" / "ca.pem")] == roots
        trusted = tls_context(roots).get_ca_certs(binary_form=True)
        assert ssl.PEM_cert_to_DER_cert(ca.cert_pem.bytes().decode()) in trusted

    def test_relative_directories_resolve_against_the_config_file(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """The catalog, the trace store and the engine caches stay beside the config whatever
        directory the server (or ``llorch pools plan``) is started from."""
        folder = tmp_path / "conf"
        folder.mkdir()
        elsewhere = tmp_path / "elsewhere"
        elsewhere.mkdir()
        monkeypatch.chdir(elsewhere)
        path = folder / "llorch.yaml"
        path.write_text(
            "server: {artifacts_dir: state/artifacts}\n"
            "catalog: {root: state/catalog}\n"
            "engines: {cache_dir: state/engines, run_dir: /var/run/llorch}\n"
            "cluster: {token_file: ray.token}\n"
            "pools:\n"
            "  - id: built\n    engine: llamacpp\n    model: m.gguf\n"
            "    provisioning: {mode: source, source: {repo: r, ref: v1, "
            "build: {cache_dir: builds}}}\n"
            "  - id: downloaded\n    engine: llamacpp\n    model: m.gguf\n"
            "    provisioning: {mode: binary, allow_binary_downloads: true, binary: "
            "{url: 'https://example.org/b.tgz', install_dir: bin, checksum: '" + PIN + "'}}\n"
        )
        for config in (read_config_file(path), load_settings({}, path).config):
            assert str(folder / "state" / "artifacts") == config.server.artifacts_dir
            assert str(folder / "state" / "catalog") == config.catalog.root
            assert str(folder / "state" / "engines") == config.engines.cache_dir
            assert "/var/run/llorch" == config.engines.run_dir
            assert str(folder / "ray.token") == config.cluster.token_file
            built, downloaded = (pool.provisioning for pool in config.pools)
            assert built is not None and built.source is not None
            assert str(folder / "builds") == built.source.build.cache_dir
            assert downloaded is not None and downloaded.binary is not None
            assert str(folder / "bin") == downloaded.binary.install_dir

    def test_home_relative_defaults_are_left_as_written(self, tmp_path: Path) -> None:
        path = tmp_path / "llorch.yaml"
        path.write_text(MINIMAL)
        config = load_settings({}, path).config
        assert "~/.cache/llama-orch/catalog" == config.catalog.root
        assert "~/.cache/llama-orch" == config.engines.cache_dir
        assert "~/.cache/llama-orch/artifacts" == config.server.artifacts_dir

    def test_a_missing_relative_ca_root_names_where_it_was_looked_for(self, tmp_path: Path) -> None:
        path = tmp_path / "llorch.yaml"
        path.write_text(MINIMAL + "catalog: {trust_policy: {ca_roots: [missing.pem]}}\n")
        with pytest.raises(ConfigError) as info:
            load_settings({}, path)
        [issue] = info.value.issues
        assert "catalog.trust_policy.ca_roots.0" == issue.path
        assert f"CA file {tmp_path / 'missing.pem'} does not load" in str(issue)


class TestEnvironment:
    @pytest.mark.parametrize(
        ("environ", "bind", "key"),
        [
            ({"BIND_ADDR": "127.0.0.1:8080"}, "127.0.0.1:99999", "--bind"),
            ({"BIND_ADDR": "nonsense"}, None, "BIND_ADDR"),
            ({"ORCHD_ADDR": "nonsense"}, None, "ORCHD_ADDR"),
        ],
    )
    def test_a_bad_bind_names_where_it_came_from(
        self, environ: dict[str, str], bind: str | None, key: str
    ) -> None:
        config = parse_config_text(MINIMAL)
        with pytest.raises(ConfigError) as info:
            load_settings(environ, config=config, bind_override=bind)
        assert [key] == [issue.path for issue in info.value.issues]

    def test_env_overrides_bind(self) -> None:
        """BIND_ADDR (and its alias ORCHD_ADDR) override the file."""
        config = parse_config_text(MINIMAL)
        assert 9000 == load_settings({"ORCHD_ADDR": "127.0.0.1:9000"}, config=config).port
        assert (
            9001
            == load_settings(
                {"BIND_ADDR": "127.0.0.1:9001", "ORCHD_ADDR": "127.0.0.1:9000"}, config=config
            ).port
        )

    def test_non_loopback_without_token_is_refused(self) -> None:
        """A non-loopback bind without AUTH_TOKEN fails with the code and the fix."""
        config = parse_config_text(MINIMAL)
        with pytest.raises(ConfigError) as info:
            load_settings({"BIND_ADDR": "0.0.0.0:8080"}, config=config)
        assert "NON_LOOPBACK_WITHOUT_TOKEN" in str(info.value)
        settings = load_settings(
            {"BIND_ADDR": "0.0.0.0:8080", "AUTH_TOKEN": "s3cret"}, config=config
        )
        assert not settings.loopback_bind

    def test_the_refusal_names_where_the_public_bind_came_from(self) -> None:
        """The refusal names --bind, BIND_ADDR or server.bind_addr: what the operator set."""
        config = parse_config_text(MINIMAL)
        for environ, override, key in (
            ({}, "0.0.0.0:8080", "--bind"),
            ({"BIND_ADDR": "0.0.0.0:8080"}, None, "BIND_ADDR"),
        ):
            with pytest.raises(ConfigError) as info:
                load_settings(environ, config=config, bind_override=override)
            assert [key] == [issue.path for issue in info.value.issues]
        public = parse_config_text(MINIMAL + "server: {bind_addr: '0.0.0.0:8080'}\n")
        with pytest.raises(ConfigError) as info:
            load_settings({}, config=public)
        assert ["server.bind_addr"] == [issue.path for issue in info.value.issues]

    def test_bad_env_bool(self) -> None:
        """A boolean env var with a non-boolean value names the variable."""
        config = parse_config_text(MINIMAL)
        with pytest.raises(ConfigError) as info:
            load_settings({"AUTH_OPTIONAL": "maybe"}, config=config)
        assert "AUTH_OPTIONAL: expected true or false, got 'maybe'" == str(info.value.issues[0])

    def test_sse_env_overrides(self) -> None:
        """ORCHD_SSE_* and CANCEL_ON_DISCONNECT override server.sse."""
        config = parse_config_text(MINIMAL)
        sse = load_settings(
            {"ORCHD_SSE_CHANNEL_CAP": "8", "CANCEL_ON_DISCONNECT": "false"}, config=config
        ).config.server.sse
        assert (8, False) == (sse.channel_cap, sse.cancel_on_disconnect)


class TestNotAvailableYet:
    @pytest.mark.parametrize(
        ("extra", "key"),
        [
            (
                "pools:\n  - {id: p0, engine: mock, model: m0, engine_version: b1}\n",
                "pools.0.engine_version",
            ),
            (
                "pools:\n  - {id: p0, engine: mock, model: m0,\n"
                "     require_same_engine_version: false}\n",
                "pools.0.require_same_engine_version",
            ),
            ("pools:\n  - {id: p0, engine: mock, model: m0, preload: false}\n", "pools.0.preload"),
            (
                "pools:\n  - {id: p0, engine: mock, model: m0, endpoint: 'http://h:1'}\n",
                "pools.0.endpoint",
            ),
            (
                "pools:\n  - {id: p0, engine: mock, model: m0, api_key_env: KEY}\n",
                "pools.0.api_key_env",
            ),
            (
                "pools:\n  - {id: p0, engine: llamacpp, model: m.gguf, endpoint: 'http://h:1',\n"
                "     provisioning: {mode: source, source: {repo: 'https://x/r', ref: v1}}}\n",
                "pools.0.endpoint",
            ),
            (
                "pools:\n  - {id: p0, engine: llamacpp, model: m.gguf, preload: false,\n"
                "     provisioning: {mode: source, source: {repo: 'https://x/r', ref: v1}}}\n",
                "pools.0.preload",
            ),
        ],
    )
    def test_keys_nothing_acts_on_are_refused(self, extra: str, key: str) -> None:
        """A key the schema knows but nothing acts on yet is refused, naming the key."""
        base = "gpus: {simulated: [{index: 0, name: sim, vram_mb: 1024}]}\n"
        if not extra.startswith("pools"):
            extra += "pools:\n  - {id: p0, engine: mock, model: m0}\n"
        issues = issues_of(base + extra)
        assert [key] == [i.split(":")[0] for i in issues]

    def test_tensor_split_on_an_external_engine_is_refused(self) -> None:
        """tensor_split cannot reach an engine llama-orch does not start."""
        text = """
gpus: {simulated: [{index: 0, name: a, vram_mb: 1024}, {index: 1, name: b, vram_mb: 1024}]}
pools:
  - id: p0
    engine: llamacpp
    model: m0
    devices: [0, 1]
    tensor_split: [1, 1]
    endpoint: http://127.0.0.1:9
    provisioning: {mode: external}
"""
        assert ["pools.0.tensor_split"] == [i.split(":")[0] for i in issues_of(text)]

    @pytest.mark.parametrize(
        ("provisioning", "keys"),
        [
            (
                "{mode: binary, binary: {url: 'https://x/l.tgz', checksum: '" + PIN + "'},\n"
                "      source: {repo: 'https://x/r', ref: v1}, container: {image: i}}",
                ["pools.0.provisioning.source", "pools.0.provisioning.container"],
            ),
            ("{mode: external, package: {name: vllm}}", ["pools.0.provisioning.package"]),
            (
                "{mode: external, flags: [--x], env: {A: b}, allow_binary_downloads: true}",
                [
                    "pools.0.provisioning.flags",
                    "pools.0.provisioning.env",
                    "pools.0.provisioning.allow_binary_downloads",
                ],
            ),
            (
                f"{{mode: external, model: {{checksum: 'sha256:{'a' * 64}'}}}}",
                ["pools.0.provisioning.model.checksum"],
            ),
            ("{mode: package, ports: [9000]}", ["pools.0.provisioning.ports"]),
            ("{mode: package, model: {cache_dir: /m}}", ["pools.0.provisioning.model.cache_dir"]),
        ],
    )
    def test_provisioning_keys_the_mode_never_reads_are_refused(
        self, provisioning: str, keys: list[str]
    ) -> None:
        """A provisioning block or key the pool's mode ignores is refused, naming it."""
        endpoint = "http://127.0.0.1:9" if "external" in provisioning else "null"
        text = f"""
gpus: {{simulated: [{{index: 0, name: sim, vram_mb: 1024}}]}}
pools:
  - id: p0
    engine: vllm
    model: m0
    endpoint: {endpoint}
    provisioning: {provisioning}
"""
        assert keys == [i.split(":")[0] for i in issues_of(text)]

    def test_model_checksum_must_be_a_sha256_digest(self) -> None:
        text = MINIMAL.replace(
            "{id: p0, engine: mock, model: m0}",
            "{id: p0, engine: vllm, model: m0, provisioning: {mode: package, "
            "model: {checksum: md5:12}}}",
        )
        assert ["pools.0.provisioning.model.checksum"] == [i.split(":")[0] for i in issues_of(text)]

    @pytest.mark.parametrize(
        ("provisioning", "key"),
        [
            ("{mode: binary, binary: {url: 'https://h/b.tgz', checksum: 'sha256:12ab'}}", "binary"),
            ("{mode: container, container: {image: i, digest: 'sha256:zz'}}", "container"),
            ("{mode: container, container: {image: i, digest: '12ab'}}", "container"),
        ],
    )
    def test_engine_digests_are_whole_sha256_digests(self, provisioning: str, key: str) -> None:
        """A truncated or mistyped pin fails at validation, not after a multi-GB download or
        as the container runtime's 'invalid reference format'."""
        text = MINIMAL.replace(
            "{id: p0, engine: mock, model: m0}",
            f"{{id: p0, engine: vllm, model: m0, devices: [0], provisioning: {provisioning}}}",
        )
        issues = issues_of(text)
        assert 1 == len(issues)
        assert issues[0].startswith(f"pools.0.provisioning.{key}.")
        assert "64 hex digits" in issues[0]

    def test_sections_being_built_elsewhere_are_accepted(self) -> None:
        """catalog and network_policy sections, and other provisioning modes, still load."""
        text = (
            MINIMAL
            + """
catalog: {root: /tmp/catalog}
network_policy: {allow_outbound: false}
"""
        )
        assert 1 == len(parse_config_text(text).pools)
        source = """
gpus: {simulated: [{index: 0, name: sim, vram_mb: 1024}]}
pools:
  - id: p0
    engine: llamacpp
    model: m0
    preload: true
    provisioning: {mode: source, source: {repo: https://example.invalid/x, ref: v1}}
"""
        assert 1 == len(parse_config_text(source).pools)


CLUSTER = """
gpus: {simulated: [{index: 0, name: sim, vram_mb: 1024}]}
hosts:
  - {name: gpu-b, gpus: [0, 1]}
pools:
  - id: p0
    engine: llamacpp
    model: m.gguf
    host: HOST
    devices: DEVICES
    provisioning: {mode: MODE, binary: {url: "https://x/l.tar.gz", checksum: "PIN"}}
""".replace("PIN", PIN)


class TestHosts:
    def _text(self, host: str = "gpu-b", devices: str = "[1]", mode: str = "binary") -> str:
        return CLUSTER.replace("HOST", host).replace("DEVICES", devices).replace("MODE", mode)

    def test_a_pool_on_a_declared_host_with_its_gpus_is_valid(self) -> None:
        """Its mask is the host's GPUs, not this machine's (which has only GPU 0)."""
        config = parse_config_text(self._text(), "test.yaml")
        assert "gpu-b" == config.pools[0].host and [1] == config.pools[0].devices

    @pytest.mark.parametrize(
        ("fields", "says"),
        [
            ({"host": "gpu-z"}, "names host 'gpu-z', which hosts does not declare"),
            ({"devices": "[2]"}, "must give devices among that host's gpus [0, 1] (missing: [2])"),
            ({"devices": "null"}, "must give devices among that host's gpus"),
        ],
    )
    def test_a_pool_the_host_cannot_run_is_refused(self, fields: dict[str, str], says: str) -> None:
        problems = issues_of(self._text(**fields))
        assert 1 == len(problems) and says in problems[0]

    def test_an_in_process_pool_cannot_name_a_host(self) -> None:
        text = MINIMAL.replace("model: m0}", "model: m0, host: gpu-b}")
        problems = issues_of("hosts: [{name: gpu-b, gpus: [0]}]\n" + text)
        assert 1 == len(problems)
        assert "needs provisioning mode binary, source or package" in problems[0]

    def test_replicas_spread_over_hosts_in_order(self) -> None:
        """With ``hosts``, replica i runs on the (i mod n)-th host; each host is checked."""
        text = self._text().replace("host: gpu-b", "hosts: [gpu-b, gpu-c]\n    replicas: 3")
        text = text.replace(
            "hosts:\n  - {name: gpu-b, gpus: [0, 1]}",
            "hosts:\n  - {name: gpu-b, gpus: [0, 1]}\n  - {name: gpu-c, gpus: [1]}",
        )
        pool = parse_config_text(text, "test.yaml").pools[0]
        assert ["gpu-b", "gpu-c", "gpu-b"] == [pool.host_for(f"r{i}") for i in range(3)]
        problems = issues_of(text.replace("{name: gpu-c, gpus: [1]}", "{name: gpu-c, gpus: [0]}"))
        assert 1 == len(problems) and "on host 'gpu-c' must give devices among" in problems[0]

    def test_host_and_hosts_together_are_refused(self) -> None:
        problems = issues_of(self._text().replace("host: gpu-b", "host: gpu-b\n    hosts: [gpu-b]"))
        assert 1 == len(problems) and "give host or hosts, not both" in problems[0]


class TestClusterToken:
    """The server checks the cluster token file as `llorch node join` does: at load, naming
    the key, not as a Ray traceback when the pools start."""

    def _load(self, tmp_path: Path, token: str | None, mode: int = 0o600) -> Path:
        path = tmp_path / "cluster.token"
        if token is not None:
            path.write_text(token + "\n")
            path.chmod(mode)
        text = CLUSTER.replace("HOST", "gpu-b").replace("DEVICES", "[1]").replace("MODE", "binary")
        (tmp_path / "llorch.yaml").write_text(text + "cluster: {token_file: cluster.token}\n")
        return path

    @pytest.mark.parametrize(
        ("token", "mode", "says"),
        [
            (None, 0o600, "cannot read the cluster token {path}: No such file or directory"),
            ("t" * 43, 0o644, "is readable by others; run `chmod 600 {path}`"),
            ("t" * 43, 0o000, "cannot read the cluster token {path}: Permission denied"),
            ("short", 0o600, "is too short; use `llorch token new --file {path}`"),
        ],
    )
    def test_an_unusable_cluster_token_is_refused_at_load(
        self, tmp_path: Path, token: str | None, mode: int, says: str
    ) -> None:
        path = self._load(tmp_path, token, mode)
        if mode == 0o000 and os.geteuid() == 0:
            pytest.skip("root reads any file")
        with pytest.raises(ConfigError) as info:
            load_settings({}, tmp_path / "llorch.yaml")
        problems = [str(issue) for issue in info.value.issues]
        assert 1 == len(problems) and problems[0].startswith("cluster.token_file")
        assert says.format(path=path) in problems[0]

    def test_a_private_cluster_token_loads(self, tmp_path: Path) -> None:
        path = self._load(tmp_path, "t" * 43)
        settings = load_settings({}, tmp_path / "llorch.yaml")
        assert str(path) == settings.config.cluster.token_file


class TestHeadGrace:
    """A head is given up before Ray would end the server for it, never after."""

    def _text(self, cluster: str) -> str:
        text = CLUSTER.replace("HOST", "gpu-b").replace("DEVICES", "[1]").replace("MODE", "binary")
        return text + f"cluster: {cluster}\n"

    def test_a_grace_past_rays_limit_is_refused_naming_both_keys(self) -> None:
        problems = issues_of(self._text("{head_lost_after_ms: 20000, head_exit_timeout_ms: 20000}"))
        assert 1 == len(problems), problems
        assert "head_lost_after_ms (20000) must be below" in problems[0]
        assert "cluster.head_exit_timeout_ms (20000)" in problems[0]

    def test_the_default_grace_rides_out_a_stall(self) -> None:
        config = parse_config_text(self._text("{head_exit_timeout_ms: 30000}"), "test.yaml")
        assert 15_000 == config.cluster.head_lost_after_ms
