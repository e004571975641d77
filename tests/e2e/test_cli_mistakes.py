"""An operator's mistakes with llorch: each ends in one message saying what to do and a
documented exit status, never a traceback (real subprocesses, real files)."""

from __future__ import annotations

import asyncio
import http.server
import json
import os
import signal
import socket
import subprocess
import threading
from pathlib import Path

import httpx
import pytest

from tests.e2e.test_cli import LLORCH, run
from tests.support.gguf_files import tiny_llama_gguf
from tests.support.serve_process import stop
from tests.support.server import config_of, mock_pool, running_server

POOLS = "pools:\n  - {id: p0, engine: mock, model: m0}\n"


class TestConfigFileMistakes:
    async def test_a_config_that_is_not_utf8(self, tmp_path: Path) -> None:
        """A file saved in another encoding is named as such by validate and by serve."""
        config = tmp_path / "latin1.yaml"
        config.write_bytes(POOLS.encode() + b"# caf\xe9\n")
        for args in (("config", "validate", str(config)), ("serve", "--config", str(config))):
            code, _, err = await run(*args)
            assert 2 == code, err
            assert "not UTF-8 text (byte 0xe9 at offset" in err
            assert "Traceback" not in err

    async def test_a_key_given_twice_is_refused(self, tmp_path: Path) -> None:
        """A second `pools:` (or any key repeated in one mapping) would silently replace the
        first; it is refused with its line instead."""
        pools_twice = tmp_path / "pools.yaml"
        pools_twice.write_text(POOLS + "server: {}\n" + POOLS)
        nested = tmp_path / "nested.yaml"
        nested.write_text(POOLS + "server: {bind_addr: '127.0.0.1:1', bind_addr: '127.0.0.1:2'}\n")
        for config, where, key in (
            (pools_twice, "line 4", "pools"),
            (nested, "line 3", "bind_addr"),
        ):
            code, _, err = await run("config", "validate", "--offline", str(config))
            assert 2 == code
            assert f"{where}, column" in err and f"duplicate key {key!r}" in err
            assert "Traceback" not in err

    async def test_an_engine_path_in_the_home_of_an_unknown_user(self, tmp_path: Path) -> None:
        """``~nosuchuser/...`` as an engine cache, run dir or install dir cannot be expanded:
        validate, serve and pools plan name each key instead of a traceback."""
        binary = (
            "{url: 'https://example.org/llama-b1.tar.gz', install_dir: '~nosuchuser-llorch/e', "
            "checksum: 'sha256:" + "0" * 64 + "'}"
        )
        config = tmp_path / "home.yaml"
        config.write_text(
            "engines: {cache_dir: '~nosuchuser-llorch/c', run_dir: '~nosuchuser-llorch/r'}\n"
            "pools:\n  - {id: p0, engine: llamacpp, model: /m.gguf, devices: [0], "
            f"provisioning: {{mode: binary, binary: {binary}}}}}\n"
        )
        for args in (
            ("config", "validate", "--offline", str(config)),
            ("serve", "--config", str(config)),
            ("pools", "plan", "p0", "--config", str(config)),
        ):
            code, _, err = await run(*args)
            assert 2 == code, (args, err)
            for key in ("engines.cache_dir", "engines.run_dir", "binary.install_dir"):
                assert key in err, (args, err)
            assert "no user 'nosuchuser-llorch'" in err
            assert "Traceback" not in err

    async def test_a_merge_key_may_still_be_overridden(self, tmp_path: Path) -> None:
        """YAML merge keys (`<<: *anchor`) followed by an explicit key are not duplicates."""
        config = tmp_path / "merge.yaml"
        config.write_text(
            "pools:\n"
            "  - &base {id: p0, engine: mock, model: m0}\n"
            "  - {<<: *base, id: p1, model: m1}\n"
        )
        code, out, err = await run("config", "validate", "--offline", str(config))
        assert (0, f"{config}: ok (2 pools)\n") == (code, out), err

    async def test_a_quoted_number_is_refused_with_its_line(self, tmp_path: Path) -> None:
        """`slots: "4"` is text; validate and serve refuse it naming the key and line instead
        of reading a number the file does not hold. The environment's overrides, which are
        always text, still work."""
        config = tmp_path / "quoted.yaml"
        config.write_text(POOLS.replace("model: m0}", "model: m0, slots: '4'}"))
        for args in (
            ("config", "validate", "--offline", str(config)),
            ("serve", "--config", str(config), "--bind", "127.0.0.1:0"),
        ):
            code, _, err = await run(*args)
            assert 2 == code, err
            assert (
                "pools.0.slots: an integer goes here, but line 2 quotes it as the text '4': "
                "remove the quotes"
            ) in err
            assert "Traceback" not in err
        plain = tmp_path / "plain.yaml"
        plain.write_text(POOLS + "gpus: {simulated: [{index: 0, name: sim, vram_mb: 1024}]}\n")
        code, out, err = await run(
            "config", "validate", str(plain), env={"ORCHD_SSE_HEARTBEAT_MS": "250"}
        )
        assert (0, f"{plain}: ok (1 pools)\n") == (code, out), err


class TestTokenMistakes:
    async def test_a_token_file_that_is_not_utf8(self, tmp_path: Path) -> None:
        """A garbled token file is named by the client, by the server and by `node head`,
        each exiting with its documented status instead of a traceback."""
        garbled = tmp_path / "garbled.token"
        garbled.write_bytes(b"\xff" * 43 + b"\n")
        garbled.chmod(0o600)
        ok = tmp_path / "ok.yaml"
        ok.write_text(POOLS)
        runs = (
            (2, ("submit", "hi", "--url", "http://127.0.0.1:9", "--token-file", str(garbled)), {}),
            (2, ("serve", "--config", str(ok)), {"AUTH_TOKEN_FILE": str(garbled)}),
            (1, ("node", "head", "--gpus", "1", "--token-file", str(garbled), "--dry-run"), {}),
        )
        for status, args, env in runs:
            code, _, err = await run(*args, env={"AUTH_TOKEN": "", "LLORCH_TOKEN": "", **env})
            assert status == code, err
            assert f"{garbled} is not UTF-8 text" in err
            assert "Traceback" not in err

    async def test_a_token_no_client_can_send(self, tmp_path: Path) -> None:
        """A token with a space or a non-ASCII character can never be presented as
        `Authorization: Bearer`; both ends refuse it up front."""
        ok = tmp_path / "ok.yaml"
        ok.write_text(POOLS)
        code, _, err = await run(
            "serve", "--config", str(ok), env={"AUTH_TOKEN": "caf\u00e9 au lait"}
        )
        assert 2 == code and "AUTH_TOKEN: the token holds spaces or non-ASCII" in err
        code, _, err = await run(
            "pools", "--url", "http://127.0.0.1:9", env={"LLORCH_TOKEN": "caf\u00e9"}
        )
        assert 2 == code and "LLORCH_TOKEN holds spaces or non-ASCII" in err
        assert "Traceback" not in err


class TestArgumentMistakes:
    async def test_arguments_that_are_not_utf8(self) -> None:
        """A prompt or an id in another encoding (a Latin-1 file passed as "$(cat f)") is
        refused as a usage error naming the argument, before any request is built."""
        latin1 = os.fsdecode(b"caf\xe9")
        url = ("--url", "http://127.0.0.1:9")
        for args, name in (
            (("submit", latin1, *url), "'PROMPT'"),
            (("submit", "hi", "--session", latin1, *url), "'--session'"),
            (("cancel", latin1, *url), "'TASK_ID'"),
            (("models", "--url", url[1], "show", latin1), "'MODEL_ID'"),
            (("artifacts", "get", latin1, *url), "'ARTIFACT_ID'"),
        ):
            code, _, err = await run(*args)
            assert 2 == code, err
            assert f"Invalid value for {name}: not UTF-8 text (byte 0xe9 at character 3)" in err
            assert "Traceback" not in err

    async def test_an_empty_id_is_a_usage_error(self) -> None:
        """An empty or blank id (an unset shell variable: `llorch cancel "$TASK"`) is refused as
        a usage error naming the argument, before any request is sent: sent as is it would
        name the collection, or an id no one has."""
        url = ("--url", "http://127.0.0.1:9")
        for args, name in (
            (("cancel", "", *url), "'TASK_ID'"),
            (("cancel", "  ", *url), "'TASK_ID'"),
            (("artifacts", "get", "", *url), "'ARTIFACT_ID'"),
            (("models", "--url", url[1], "show", " "), "'MODEL_ID'"),
            (("models", "--url", url[1], "verify", ""), "'MODEL_ID'"),
            (("models", "--url", url[1], "rm", "\t"), "'MODEL_ID'"),
            (("pools", "drain", "", *url), "'POOL_ID'"),
            (("pools", "reload", "", "m1", *url), "'POOL_ID'"),
            # Optional (the pool's own model when left out), but never blank.
            (("pools", "reload", "p0", " ", *url), "'[MODEL_REF]'"),
        ):
            code, _, err = await run(*args)
            assert 2 == code, (args, err)
            assert f"Invalid value for {name}: empty" in err, (args, err)
            assert "Traceback" not in err

    async def test_an_interval_that_is_not_a_number_of_seconds(self) -> None:
        """`nan` and `inf` parse as floats and pass a lower bound (NaN compares false), then
        end `status --watch` in a traceback from time.sleep: refused as usage errors."""
        for value in ("nan", "inf", "-inf"):
            code, _, err = await run(
                "status", "--watch", "--interval", value, "--url", "http://127.0.0.1:9"
            )
            assert 2 == code, err
            assert "Invalid value for '--interval'" in err and "Traceback" not in err

    async def test_a_url_that_names_no_server(self) -> None:
        """A URL without its scheme (or with a port past 65535) is a usage error naming
        where it came from, not "cannot reach" as if the server were down (exit 3)."""
        for args, env, given in (
            (("pools", "--url", "127.0.0.1:8080"), {}, "--url: expected an http:// or https://"),
            (("submit", "hi", "--url", "http://127.0.0.1:99999"), {}, "--url: 'http://127.0.0."),
            (("models", "ls"), {"LLORCH_URL": "localhost:8080"}, "LLORCH_URL: expected an http"),
            (
                ("status",),
                {"LLORCH_URL": "http://[::1"},
                "LLORCH_URL: 'http://[::1' is not a valid",
            ),
        ):
            code, _, err = await run(*args, env=env)
            assert 2 == code, err
            assert given in err and "Traceback" not in err


class TestModelsConfig:
    async def test_a_bad_config_is_a_config_error(self, tmp_path: Path) -> None:
        """`llorch models --config BAD` lists the problems and exits 2, as serve does."""
        config = tmp_path / "twice.yaml"
        config.write_text(POOLS + POOLS)
        code, _, err = await run("models", "--local", "--config", str(config), "ls")
        assert 2 == code, err
        assert "duplicate key 'pools'" in err and "Traceback" not in err

    async def test_the_serving_config_works_without_the_serving_secrets(
        self, tmp_path: Path
    ) -> None:
        """The catalog reads its root and policies from the server's own config (a LAN bind,
        an upstream key variable) without the token or key in the operator's shell."""
        config = tmp_path / "lan.yaml"
        config.write_text(
            "server: {bind_addr: '0.0.0.0:8080'}\n"
            f"catalog: {{root: {tmp_path / 'catalog'}}}\n"
            "pools:\n"
            "  - {id: p0, engine: mock, model: m0}\n"
            "  - {id: o, engine: openai, model: gpt, endpoint: 'https://example.invalid',\n"
            "     api_key_env: LLORCH_TEST_UNSET_KEY, provisioning: {mode: external}}\n"
        )
        model = tmp_path / "weights.bin"
        model.write_bytes(b"simulated weights")
        env = {"AUTH_TOKEN": "", "AUTH_TOKEN_FILE": ""}
        code, out, err = await run(
            "models", "--local", "--config", str(config), "pull", f"file:{model}", env=env
        )
        assert (0, f"file:{model}\n") == (code, out), err
        code, out, err = await run("models", "--local", "--config", str(config), "ls", env=env)
        assert 0 == code and f"file:{model}" in out, err

    async def test_pulling_a_truncated_gguf(self, tmp_path: Path) -> None:
        """A GGUF file cut short (a copy that stopped early) registers without header facts
        instead of ending the pull in a traceback inside the GGUF reader."""
        cut = tmp_path / "cut.gguf"
        cut.write_bytes(tiny_llama_gguf(tmp_path / "whole.gguf").read_bytes()[:64])
        config = tmp_path / "local.yaml"
        config.write_text(POOLS + f"catalog: {{root: {tmp_path / 'catalog'}}}\n")
        code, out, err = await run("models", "--local", "--config", str(config), "pull", str(cut))
        assert (0, f"file:{cut}\n") == (code, out), err


class _NotLlamaOrch(http.server.BaseHTTPRequestHandler):
    """Another web server (what --url reaches when it names the wrong port)."""

    def do_GET(self) -> None:
        body = b"<html>some other service</html>"
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_POST = do_GET

    def log_message(self, format: str, *args: object) -> None:
        pass


class TestWrongServer:
    async def test_a_url_that_reaches_another_server(self) -> None:
        """Every command pointed at a web server that is not llama-orch says so and exits 3
        (cannot reach the server), instead of a JSON decoding traceback."""
        other = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _NotLlamaOrch)
        thread = threading.Thread(target=other.serve_forever, daemon=True)
        thread.start()
        url = f"http://127.0.0.1:{other.server_address[1]}"
        try:
            for args in (
                ("submit", "hi", "--url", url),
                ("pools", "--url", url),
                ("status", "--url", url),
                ("selftest", "--url", url),
                ("cancel", "5b6f1abe-7323-4a83-b87b-ecde58559957", "--url", url),
                ("models", "--url", url, "ls"),
            ):
                code, _, err = await run(*args)
                assert 3 == code, (args, err)
                assert "(text/html), which is not an answer from llama-orch" in err
                assert "Traceback" not in err
        finally:
            other.shutdown()
            other.server_close()
            thread.join()


class TestOptionPlacement:
    async def test_url_after_the_subcommand(self, tmp_path: Path) -> None:
        """`llorch pools drain P --url U` and `llorch models ls --url U` work as
        `llorch submit ... --url U` does, instead of "No such option '--url'"."""
        model = tmp_path / "weights.bin"
        model.write_bytes(b"simulated weights")
        config = config_of(mock_pool("p0"), catalog={"root": str(tmp_path / "served")})
        async with running_server(config) as srv:
            code, out, err = await run("models", "pull", f"file:{model}", "--url", srv.url)
            assert (0, f"file:{model}\n") == (code, out), err
            code, out, err = await run("models", "ls", "--url", srv.url)
            assert 0 == code and f"file:{model}" in out, err
            assert "using the catalog on disk" not in err
            code, out, err = await run(
                "pools", "drain", "p0", "--deadline-ms", "0", "--url", srv.url
            )
            assert 0 == code and "draining=True" in out, err

    async def test_an_id_stays_one_path_segment(self, tmp_path: Path) -> None:
        """An id typed with `..`, `/` or `?` names that id, never another endpoint: before,
        `llorch artifacts get ../status` printed GET /v1/status."""
        model = tmp_path / "weights.bin"
        model.write_bytes(b"simulated weights")
        config = config_of(mock_pool("p0"), catalog={"root": str(tmp_path / "served")})
        async with running_server(config) as srv:
            code, out, err = await run("artifacts", "get", "../status", "--url", srv.url)
            assert (1, "") == (code, out) and "HTTP 404" in err
            code, _, err = await run("cancel", "..", "--url", srv.url)
            assert 2 == code and "'..' is not an id" in err
            # A model id holds ':' and '/' and still names its model.
            code, _, err = await run("models", "--url", srv.url, "pull", f"file:{model}")
            assert 0 == code, err
            code, out, err = await run("models", "--url", srv.url, "show", f"file:{model}")
            assert 0 == code and f'"id": "file:{model}"' in out, err


class TestInterrupt:
    async def test_ctrl_c_mid_stream_cancels_the_task(self) -> None:
        """SIGINT during `llorch submit` cancels the task even on a server that keeps tasks
        whose stream closes, says which task, and exits 130."""
        config = config_of(
            mock_pool(mock={"hang_after_token": 1}),
            server={"sse": {"cancel_on_disconnect": False}},
        )
        async with running_server(config) as srv:
            proc = await asyncio.create_subprocess_exec(
                *LLORCH,
                "submit",
                "hi",
                "--url",
                srv.url,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
            assert proc.stdout is not None and proc.stderr is not None
            started = (await asyncio.wait_for(proc.stderr.readline(), 30)).decode()
            task_id = started.split()[1]
            await asyncio.wait_for(proc.stdout.read(1), 30)  # the first token arrived
            proc.send_signal(signal.SIGINT)
            _, err = await asyncio.wait_for(proc.communicate(), 30)
            frames = await srv.stream(task_id)
        assert 130 == proc.returncode, err
        assert f"llorch: interrupted; task {task_id} canceled" in err.decode()
        assert frames[-1][0] == "end" and frames[-1][1]["canceled"] is True


class TestOutputMistakes:
    def test_models_ls_into_a_closed_pipe(self, tmp_path: Path) -> None:
        """`llorch models ls | head -0`: the closed pipe is not blamed on the catalog."""
        config = tmp_path / "local.yaml"
        config.write_text(POOLS + f"catalog: {{root: {tmp_path / 'catalog'}}}\n")
        read_end, write_end = os.pipe()
        os.close(read_end)
        try:
            done = subprocess.run(
                [*LLORCH, "models", "--local", "--config", str(config), "ls"],
                stdout=write_end,
                stderr=subprocess.PIPE,
                timeout=60,
                check=False,
            )
        finally:
            os.close(write_end)
        err = done.stderr.decode()
        assert 1 == done.returncode, err
        assert "catalog" not in err and "Traceback" not in err


def _ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as sock:
            sock.bind(("::1", 0))
    except OSError:
        return False
    return True


class TestBindMistakes:
    @pytest.mark.parametrize(
        ("bind", "url_host"),
        [
            ("127.0.0.1:0", "127.0.0.1"),
            pytest.param(
                "[::1]:0",
                "[::1]",
                marks=pytest.mark.skipif(not _ipv6_loopback(), reason="no IPv6 loopback"),
            ),
        ],
    )
    def test_port_zero_names_the_port_it_got(
        self, tmp_path: Path, bind: str, url_host: str
    ) -> None:
        """`--bind HOST:0` takes a free port; the start line names that port (and an IPv6
        host in brackets), so the URL it prints is one a client can use."""
        config = tmp_path / "zero.yaml"
        config.write_text(POOLS)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AUTH_", "LOG_"))}
        process = subprocess.Popen(
            [*LLORCH, "serve", "--config", str(config), "--bind", bind],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env={**env, "XDG_CACHE_HOME": str(tmp_path / "cache")},
        )
        try:
            assert process.stderr is not None
            for line in process.stderr:
                event = json.loads(line)
                if event.get("event") == "start":
                    break
            else:
                raise AssertionError("llorch serve ended before its start line")
            url = event["human"].split(" on ")[1].split(" ")[0]
            assert url.startswith(f"http://{url_host}:") and not url.endswith(":0")
            assert 200 == httpx.get(f"{url}/v1/capabilities", timeout=10).status_code
        finally:
            stop(process)
            if process.stderr is not None:
                process.stderr.close()
