"""The GPT-as-judge of EffiLoRA Tables 12-13: seven criteria, each an integer 1-10, Avg as Table 4.

Speaks the OpenAI chat API through the ``openai`` client, so any compatible server works: the endpoint
is the client's ``OPENAI_BASE_URL``, the key ``OPENAI_API_KEY`` (read by the client, never written
anywhere by the harness). Every parsed answer is cached on disk (a cache that cannot be written is a warning),
keyed by the image's sha256, the prompt, the rubric version, the judge model and the server (its base URL, hashed):
a cached answer is never requested again. The model that answered, as the reply names it (``gpt-4o`` may answer
as a dated snapshot), is kept beside the answer and in the record, not in the key. An answer that is not one JSON
object with exactly the seven keys and integer values 1-10 is asked for again up to ``RETRIES`` times, then recorded
as failed for that image; the run goes on. An API error (no connection,
a 4xx or 5xx status after the client's own retries, a reply that is not JSON) records the image as failed with the
error, and after ``GIVE_UP`` such errors in a row the remaining images are recorded as failed without a request: a
run's other scores are never lost to the judge. The judge asks at temperature 0; a model that takes only its default
(OpenAI's reasoning models refuse 0 with a 400 naming ``temperature``) is asked again without one, as are that judge's
later requests, and the answers say so (``Verdict.temperature``, ``DEFAULT_TEMPERATURE``). Before training, ``probe``
asks the server's model list once: no connection, a refused key or a body that is not JSON stops the run there. A
request's timeout and the give-up count are ``HARNESS_JUDGE_TIMEOUT`` (seconds, default ``TIMEOUT_S``) and
``HARNESS_JUDGE_GIVE_UP`` (default ``GIVE_UP``): how long a slow judge may take is the user's call, and neither
changes what is scored (not in the run id). The timeout is httpx's, per operation: connecting, and each read or
write, not the whole request, so a server that keeps sending a byte now and then is not cut off (no clean way to a
deadline over the whole: httpx has no total timeout, its read timeout is fixed for a response's headers and body
when each begins, and a request left running in a thread cannot be stopped).
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness import models
from harness.atomic import write_json
from tasks.diffusion.judge_parse import CRITERIA as CRITERIA
from tasks.diffusion.judge_parse import MAX_ANSWER as MAX_ANSWER
from tasks.diffusion.judge_parse import NO_OBJECT as NO_OBJECT
from tasks.diffusion.judge_parse import answer_text, parse

RUBRIC_VERSION = "1"
RETRIES = 3  # requests per image at most (the first and two more) before it is recorded as failed
TIMEOUT_S = 60.0
PROBE_TIMEOUT_S = 10.0  # the model list before training, asked once, without retries
GIVE_UP = 3  # API errors in a row after which the remaining images are not requested
# what an answer cut off at the server's token limit (``finish_reason`` ``length``) is refused with: the record's
# ``last_problem`` begins so, and the warning then says to raise the server's limit, not to change the judge
CUT_OFF = "the answer was cut off at the server's length limit"
# what an answer asked for without a temperature records as its temperature (in the cache and, through
# ``temperature_field``, the entry): a model that refuses 0 answers at its own default (OpenAI's reasoning models: 1)
DEFAULT_TEMPERATURE = "default"
MIN_SCRUBBED_KEY = 8  # a shorter OPENAI_API_KEY is a dummy for a server that takes none, not a secret: not scrubbed
RUBRIC = """You are an expert judge of AI-generated images. Rate the image for the text prompt it was generated \
from on seven criteria, each an integer from 1 (worst) to 10 (best):
- quality: overall visual quality (sharpness, no artifacts).
- detail: richness and precision of details.
- theme: how well the image matches the prompt's subject and theme.
- creativity: originality of composition and interpretation.
- style: consistency and appeal of the artistic style.
- emotion: how well the image conveys the mood the prompt implies.
- tech: technical execution (colour, lighting, composition).
Answer with one JSON object and nothing else, whose keys are exactly quality, detail, theme, creativity, \
style, emotion, tech and whose values are integers 1-10."""

# the follow-up when an answer does not parse (what was wrong is added in brackets)
RETRY_PROMPT = (
    "That answer could not be read. Answer again with one JSON object and nothing else, whose keys are exactly "
    "quality, detail, theme, creativity, style, emotion, tech and whose values are integers 1-10"
)


@dataclass
class Verdict:
    scores: dict[str, int] | None  # None: failed (RETRIES unparsable answers, or an API error)
    raw: str
    cached: bool
    requests: int
    error: str = ""  # the API error that failed it, if one did
    # the model that answered as the server named it (an alias's dated snapshot, say); "" where unknown: an answer
    # cached before the cache kept it, or a reply without one
    model: str = ""
    # why the last answer was not taken (``parse``'s ``ValueError``, or ``CUT_OFF``), shortened, the key taken out;
    # "" where one was taken: a judge's answer may look complete when the server cut it (its token cap)
    problem: str = ""
    # what it was asked at: 0, or ``DEFAULT_TEMPERATURE`` where the model refused 0 (an answer cached before the cache
    # kept it was asked at 0: a model that refused 0 left nothing to cache)
    temperature: int | str = 0


def limits() -> tuple[float, int]:
    """``(timeout in seconds, API errors in a row before giving up)``: ``HARNESS_JUDGE_TIMEOUT`` and
    ``HARNESS_JUDGE_GIVE_UP`` where set, else ``TIMEOUT_S`` and ``GIVE_UP``."""
    import math
    import os

    raw_t, raw_g = os.environ.get("HARNESS_JUDGE_TIMEOUT", ""), os.environ.get("HARNESS_JUDGE_GIVE_UP", "")
    try:
        timeout = float(raw_t) if raw_t.strip() else TIMEOUT_S
    except ValueError:
        timeout = math.nan
    if not (math.isfinite(timeout) and timeout > 0):
        raise ValueError(
            f"HARNESS_JUDGE_TIMEOUT={raw_t!r} is not a number of seconds > 0; set it so (e.g. 120), or unset it for {TIMEOUT_S:g}"
        )
    try:
        give_up = int(raw_g) if raw_g.strip() else GIVE_UP
    except ValueError:
        give_up = 0
    if give_up < 1:
        raise ValueError(
            f"HARNESS_JUDGE_GIVE_UP={raw_g!r} is not a whole number >= 1; set it so (e.g. 5), or unset it for {GIVE_UP}"
        )
    return timeout, give_up


def check_available(judge_model: str) -> None:
    """Before anything trains: the judge's limits are valid (``limits``), the client is installed, has a key (any
    value for a server that takes none) and reaches a server that takes the key (``probe``)."""
    import importlib.util
    import os

    limits()
    if importlib.util.find_spec("openai") is None:
        raise ValueError('--judge-model needs the openai client: pip install -e ".[judge]" (or pip install openai)')
    if not os.environ.get("OPENAI_API_KEY"):
        raise ValueError(
            "--judge-model needs OPENAI_API_KEY set (any value for a server that takes none) and, for a server "
            "other than OpenAI's, OPENAI_BASE_URL"
        )
    probe(judge_model)


_PROBED: set[tuple[str, str, str]] = set()  # (base URL, sha256 of the key, model): probed in this process


def probe(judge_model: str, client: Any = None) -> None:
    """One request (the server's model list) before training, so that an ``OPENAI_BASE_URL`` where nothing
    answers, or a refused key, stops the run at once rather than after training as failed judge columns. No
    connection or a 401/403 is an error; any other status counts as reachable and the judging itself decides
    (a 404 is a warning: a base URL without its ``/v1`` answers so). A listed model set without
    ``judge_model`` is a warning (a proxy may take names it does not list)."""
    import os

    import openai

    if client is None:
        client = _client(timeout=PROBE_TIMEOUT_S, max_retries=0)
    key = hashlib.sha256(os.environ.get("OPENAI_API_KEY", "").encode()).hexdigest()
    ident = (str(client.base_url), key, judge_model)
    if ident in _PROBED:
        return
    where = endpoint(client)
    _warn_plain_http(where)  # before the first request, which carries the key
    if not os.environ.get("OPENAI_API_KEY", "").isascii():  # no request could carry it (a pasted curly quote)
        raise ValueError(
            "OPENAI_API_KEY holds a character that is not ASCII, which no HTTP header can carry: set it to the key "
            "as issued, or leave --judge-model out"
        )
    if _unsendable_key(os.environ.get("OPENAI_API_KEY", "")):  # h11 refuses it unsent: "cannot be reached" misled
        raise ValueError(
            "OPENAI_API_KEY has whitespace around it or a control character (a line end read from a file, say), "
            "which no HTTP header can carry: strip it (export OPENAI_API_KEY=\"$(tr -d ' \\r\\n' < key.txt)\"), "
            "or leave --judge-model out"
        )

    def not_a_list(why: str) -> ValueError:
        return ValueError(
            f"the judge at {where} answers its model list (GET .../models) with a body that is not a JSON model list "
            f"({scrub(why)[:200]}): fix OPENAI_BASE_URL (or the server), or leave --judge-model out"
        )

    try:
        listed = [str(m.id) for m in client.models.list() if getattr(m, "id", None)]
    except openai.APIConnectionError as exc:  # no server there, or no answer in PROBE_TIMEOUT_S
        raise ValueError(
            f"the judge at {where} cannot be reached ({scrub(f'{type(exc).__name__}: {exc}')[:200]}): start the "
            "server or fix OPENAI_BASE_URL, or leave --judge-model out"
        ) from None
    except (openai.AuthenticationError, openai.PermissionDeniedError) as exc:
        raise ValueError(
            f"the judge at {where} refuses the key ({scrub(f'{type(exc).__name__}: {exc}')[:200]}): fix "
            "OPENAI_API_KEY, or leave --judge-model out"
        ) from None
    except openai.NotFoundError:  # a server without a model list, or a base URL without its path (e.g. /v1)
        print(
            f"warning: the judge at {where} has no model list (404 for .../models): if OPENAI_BASE_URL lacks a path "
            "the server needs (such as /v1), the judging will fail",
            file=sys.stderr,
        )
        listed = []
    # it answered (a status, a body that is no model list: JSON of another shape, or a page not labelled JSON,
    # which the client hands on as a string; the judging then tells what it got)
    except (openai.APIError, AttributeError, TypeError):
        listed = []
    except json.JSONDecodeError as exc:  # a 200 labelled JSON whose body is not (a proxy's login page): no API there
        raise not_a_list(f"{type(exc).__name__}: {exc}") from None
    if listed and judge_model not in listed:
        shown = ", ".join(sorted(map(str, listed))[:10]) + (" ..." if len(listed) > 10 else "")
        print(
            f"warning: the judge at {where} does not list the model {judge_model!r} (it lists {shown}); "
            "the judging may fail: check --judge-model",
            file=sys.stderr,
        )
    _PROBED.add(ident)


_WARNED_HTTP: set[str] = set()  # endpoints warned about as plain HTTP to another machine, in this process


def _warn_plain_http(where: str) -> None:
    """Warn, once per endpoint and process, that ``where`` (``endpoint``'s) is plain HTTP to another machine: the
    probe says it before its request sends the key, a run whose probe was skipped says it as its judge starts."""
    if where.startswith("http://") and not _loopback(where) and where not in _WARNED_HTTP:
        _WARNED_HTTP.add(where)
        print(
            f"warning: the judge's endpoint {where} is plain HTTP to another machine: the key and the images travel "
            "unencrypted; use https:// (or a loopback address)",
            file=sys.stderr,
        )


def cache_key(image_png: bytes, prompt: str, judge_model: str, server: str) -> str:
    """What a cached answer is the answer to: the image, the prompt, the rubric, the model and the server that
    judged (the sha256 of its base URL: two servers, or two paths of one gateway, may give one name to different
    models)."""
    ident = {
        "image_sha256": hashlib.sha256(image_png).hexdigest(),
        "prompt": prompt,
        "rubric": RUBRIC_VERSION,
        "judge_model": judge_model,
        "endpoint": server,
    }
    return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()


class Judge:
    def __init__(self, judge_model: str, cache: Path | None = None, client: Any = None):
        timeout, self.give_up = limits()
        if client is None:
            client = _client(timeout=timeout, max_retries=2)  # OPENAI_BASE_URL and OPENAI_API_KEY
        self.model, self.client = judge_model, client
        self.endpoint = endpoint(client)
        # what the cache keys on: the whole base URL (a gateway routes by path), hashed, so never written out
        self.server = hashlib.sha256(str(getattr(client, "base_url", "")).encode()).hexdigest()
        _warn_plain_http(self.endpoint)
        self.cache = cache or models.cache_dir() / "diffusion" / "judge"
        self.errors_in_a_row, self.last_error = 0, ""
        self.cache_warned = False  # a cache that cannot be written is said once
        self.temperature: int | str = 0  # DEFAULT_TEMPERATURE once the model refused 0: not sent again

    def __call__(self, image_png: bytes, prompt: str) -> Verdict:
        path = self.cache / f"{cache_key(image_png, prompt, self.model, self.server)}.json"
        if path.is_file():
            try:
                saved = json.loads(path.read_text())
                scores = parse(saved["answer"])
                return Verdict(
                    scores,
                    saved["answer"],
                    True,
                    0,
                    model=_model_name(saved.get("answered_by")),
                    temperature=DEFAULT_TEMPERATURE if saved.get("temperature") == DEFAULT_TEMPERATURE else 0,
                )
            except (OSError, ValueError, KeyError, TypeError):  # a damaged cache file: asked again, then rewritten
                pass
        url = "data:image/png;base64," + base64.b64encode(image_png).decode()
        messages = [
            {"role": "system", "content": RUBRIC},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": f"Prompt: {prompt}"},
                    {"type": "image_url", "image_url": {"url": url}},
                ],
            },
        ]
        if self.errors_in_a_row >= self.give_up:
            return Verdict(
                None, "", False, 0, f"not requested after {self.give_up} API errors in a row: {self.last_error}"
            )
        raw, answered_by, problem, sent = "", "", "", 0
        for _ in range(RETRIES):
            try:
                sent += 1
                reply = self._complete(messages)
                if reply is None:  # the model refused temperature 0: the same request without one
                    sent += 1
                    reply = self._complete(messages)
                answered_by = _model_name(getattr(reply, "model", None))  # the cache is keyed by the name asked for
                message = reply.choices[0].message
                content = message.content
                if content is None and isinstance(getattr(message, "refusal", None), str):  # kept, not parsed
                    content = f"(refused) {message.refusal}"
                # the text as parse reads it (a list of parts joined), so that the cached answer parses again
                raw = answer_text(content) or ("" if content is None else json.dumps(content, default=str)[:MAX_ANSWER])
                finish = getattr(reply.choices[0], "finish_reason", None)
            except _api_errors() as exc:  # the client already retried what it retries
                self.errors_in_a_row += 1
                self.last_error = scrub(f"{type(exc).__name__}: {exc}")[:300]
                return Verdict(None, raw, False, sent, self.last_error, temperature=self.temperature)
            self.errors_in_a_row = 0
            try:
                if finish == "length":  # cut off at the server's token limit: its last object may be a draft
                    raise ValueError(f"{CUT_OFF}: give the JSON object alone")
                scores = parse(content)
            except ValueError as exc:
                # asked again with what was wrong (the same request at temperature 0 gets the same answer); the
                # first request alone is what the cache keys on, as the answer it keeps parses without the rest
                problem = scrub(str(exc))[:200]
                messages = [
                    *messages[:2],
                    {"role": "assistant", "content": raw[:MAX_ANSWER]},
                    {"role": "user", "content": f"{RETRY_PROMPT} ({problem})"},
                ]
                continue
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                write_json(
                    path,
                    {
                        "answer": raw,
                        "prompt": prompt,
                        "judge_model": self.model,
                        "endpoint": self.endpoint,
                        "rubric": RUBRIC_VERSION,
                        "temperature": self.temperature,
                    }
                    | ({"answered_by": answered_by} if answered_by else {}),
                )
            except OSError as exc:  # a read-only cache, a full disk: the score stands, only the next run asks again
                if not self.cache_warned:
                    self.cache_warned = True
                    print(
                        f"warning: the judge's answers cannot be cached in {self.cache} ({type(exc).__name__}: "
                        f"{exc}): they are asked for again in the next run; set HARNESS_CACHE to a folder you can "
                        "write",
                        file=sys.stderr,
                    )
            return Verdict(scores, raw, False, sent, model=answered_by, temperature=self.temperature)
        return Verdict(None, raw, False, sent, model=answered_by, problem=problem, temperature=self.temperature)

    def _complete(self, messages: list[dict[str, Any]]) -> Any:
        """One chat completion at the judge's temperature; None where the model refused temperature 0 (a 400
        naming it: OpenAI's reasoning models take only their default), after which this judge sends none."""
        if self.temperature == DEFAULT_TEMPERATURE:
            return self.client.chat.completions.create(model=self.model, messages=messages)
        try:
            return self.client.chat.completions.create(model=self.model, messages=messages, temperature=0)
        except _api_errors() as exc:
            if not _refuses_temperature(exc):
                raise
            self.temperature = DEFAULT_TEMPERATURE
            return None


def temperature_field(verdicts: list[Verdict]) -> dict[str, str]:
    """What an entry records beside its ``judge_model``: ``judge_temperature`` ``DEFAULT_TEMPERATURE`` where any of
    ``verdicts`` was asked without one (the model refused 0), as its scores are not at temperature 0; nothing at 0,
    as every entry before kept it, so that a run judged before and one judged after are not two scorers."""
    return (
        {"judge_temperature": DEFAULT_TEMPERATURE}
        if any(v.temperature == DEFAULT_TEMPERATURE for v in verdicts)
        else {}
    )


def _refuses_temperature(exc: Exception) -> bool:
    """Whether ``exc`` is a 400 refusing the temperature sent: its error names the param ``temperature``, or names no
    param and says in its message that the temperature is not supported (OpenAI: "Unsupported value: 'temperature'
    does not support 0 with this model. Only the default (1) value is supported."; a gateway such as LiteLLM:
    "... don't support temperature=0. Only temperature=1 is supported.", param None, from a re-review)."""
    if getattr(exc, "status_code", None) != 400:
        return False
    body = getattr(exc, "body", None)
    message = str(body.get("message", "")) if isinstance(body, dict) else str(exc)
    param = getattr(exc, "param", None)
    if param == "temperature":
        return True
    if param not in (None, "", "None"):  # another parameter's error, whatever its message says
        return False
    return "temperature" in message.lower() and re.search(r"support|only", message, re.IGNORECASE) is not None


def _unsendable_key(key: str) -> bool:
    """Whether ``key`` has whitespace around it or a control character anywhere: h11 refuses such a header
    before a request is sent (a CRLF file read with ``$(cat key.txt)``), which the client reports as no connection."""
    return key != key.strip() or any(ord(c) < 32 or ord(c) == 127 for c in key)


def _model_name(name: Any) -> str:
    """A reply's (or a cache entry's) ``model`` as a record keeps it: a string, shortened, the key taken out."""
    return scrub(name)[:200] if isinstance(name, str) else ""


def endpoint(client: Any) -> str:
    """The judge server as a record keeps it: scheme, host and port of the client's base URL, nothing else (no
    path, where a proxy may carry a token; no user, no query)."""
    from urllib.parse import urlsplit

    try:
        url = urlsplit(str(getattr(client, "base_url", "") or ""))
        host, port = url.hostname or "", url.port
    except ValueError:  # a port that is not a number
        return "unknown"
    shown = f"[{host}]" if ":" in host else host  # an IPv6 address keeps its brackets
    return f"{url.scheme}://{shown}{f':{port}' if port else ''}" if host else "unknown"  # no path: a proxy's token


def endpoint_from_environment() -> str:
    """``endpoint`` of the client a judge would make here (``OPENAI_BASE_URL``, else OpenAI's), asking nothing."""
    return endpoint(_client(max_retries=0))


def _client(**options: Any) -> Any:
    """``openai.OpenAI(**options)`` (``OPENAI_BASE_URL``, ``OPENAI_API_KEY``), or a one-line ``ValueError`` saying
    what to fix: no key, or a URL the client cannot parse (httpx raises its own ``InvalidURL``, not an
    ``OpenAIError``, for ``http://localhost:8000v1``; a malformed proxy variable fails the same way)."""
    try:
        import openai
    except ImportError:
        raise ValueError("the judge needs the openai client: pip install openai") from None
    try:
        return openai.OpenAI(**options)
    except openai.OpenAIError as exc:  # e.g. no key
        raise ValueError(f"the judge's client cannot start: {exc}") from None
    except Exception as exc:  # a malformed URL: the client's http library raises what it raises
        raise ValueError(
            f"the judge's client cannot start ({scrub(f'{type(exc).__name__}: {exc}')[:200]}): fix OPENAI_BASE_URL "
            "(such as http://localhost:8000/v1; or a proxy variable such as HTTPS_PROXY), or leave --judge-model out"
        ) from None


def _loopback(url: str) -> bool:
    import ipaddress
    from urllib.parse import urlsplit

    host = urlsplit(url).hostname or ""
    try:
        return host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _api_errors() -> tuple[type[Exception], ...]:
    """An API error (openai's: no connection, a 4xx or 5xx status), a reply without ``choices[0].message``, or one
    that is not JSON (a 200 labelled JSON whose body is not: the client's ``JSONDecodeError``; not every
    ``ValueError``: a key no header can carry is the caller's to fix, and the probe says so)."""
    malformed = (AttributeError, IndexError, TypeError, json.JSONDecodeError)
    try:
        import openai
    except ImportError:  # a client passed in without the package
        return malformed
    return (openai.APIError, *malformed)


def scrub(message: str) -> str:
    """An error message as a record may keep it: the key (a server may echo it, masked or not) taken out, where it
    has ``MIN_SCRUBBED_KEY`` characters or more (a shorter one is a dummy: any value for a server that takes none)."""
    import os

    key = os.environ.get("OPENAI_API_KEY")
    if key and len(key) >= MIN_SCRUBBED_KEY:  # a dummy 'x' would mangle every model name, error and answer
        message = message.replace(key, "***")
    return re.sub(r"sk-[A-Za-z0-9_\-*.]+", "sk-***", message)
