"""Runware task semantics of the local server: validation, billing, delivery, recovery.

`Simulator.run_tasks()` takes the task objects of one POST /v1 or WebSocket message
(authentication already handled) and returns the `data` items and `errors` (each with an
HTTP status) to answer.
Billing rule: an imageInference task is charged once, at acceptance, for the images it will
deliver (results blocked by content policy and tasks failing with `timeoutProvider` cost
nothing, as the simulator's documented choice); its taskUUID is then taken for good, and any
re-send is refused with `conflictTaskUUID` and counted as a duplicate attempt.
Parameters a task leaves out take the defaults of the model's request schema, which are
Runware's documented ones (outputType URL, outputFormat JPG, outputQuality 95, sync).
With a Journal, every acceptance is written through before it is answered (journal.py).
"""

from __future__ import annotations

import base64
import functools
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import anyio
import jsonschema
from PIL import Image

from specrunner import models
from specrunner.local import engine, quickcheck
from specrunner.local.faults import FaultInjector, TaskFaults
from specrunner.local.journal import Journal, image_key
from specrunner.local.state import ImageStore, Ledger, Result, TaskRecord
from specrunner.runware import error_object, is_uuid4

SIMULATOR = "specrunner local simulator"
_OWN_IMAGE = re.compile(r"/image/([0-9a-fA-F-]{36})\.(?:jpg|png|webp)$")
Errors = list[tuple[int, dict[str, Any]]]


@dataclass
class Outcome:
    """What one POST /v1 answers: data items and (status, error object) pairs."""

    data: list[dict[str, Any]] = field(default_factory=list)
    errors: Errors = field(default_factory=list)

    def envelope(self) -> tuple[int, dict[str, Any]]:
        """(HTTP status, Runware envelope): `data` unless only errors, `errors` if any; the
        status is 200 when any item succeeded, else the first error's."""
        doc: dict[str, Any] = {}
        if self.data or not self.errors:
            doc["data"] = self.data
        if self.errors:
            doc["errors"] = [e for _, e in self.errors]
        return (200 if self.data or not self.errors else self.errors[0][0]), doc


@functools.cache
def _quick_check(model: str) -> quickcheck.Check:
    return quickcheck.build(models.load_schema(models.get_model(model).request_schema))


@functools.cache
def _defaults(model: str) -> dict[str, Any]:
    props = models.load_schema(models.get_model(model).request_schema)["properties"]
    return {name: prop["default"] for name, prop in props.items() if "default" in prop}


def param(request: dict[str, Any], name: str) -> Any:
    """A top-level request parameter, or the model's documented default when it is absent."""
    return request[name] if name in request else _defaults(request["model"]).get(name)


@dataclass(frozen=True)
class StoredInput:
    """An upload restored from the state directory, loaded on first use."""

    key: str


class TaskError(Exception):
    """A task refused with a Runware-shaped error."""

    def __init__(self, status: int, code: str, message: str, parameter: str | None = None,
                 **extra: Any) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.parameter, self.extra = (
            status, code, message, parameter, extra)

    def to_error(self, task: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        uuid = task.get("taskUUID") if isinstance(task.get("taskUUID"), str) else None
        ttype = task.get("taskType") if isinstance(task.get("taskType"), str) else None
        return self.status, error_object(self.code, self.message, parameter=self.parameter,
                                         task_type=ttype, task_uuid=uuid, **self.extra)


def _foreign_url(value: str) -> bool:
    """True for an http(s) URL that is not one of this server's own /image/ outputs."""
    return bool(re.match(r"^https?://", value)) and not _OWN_IMAGE.search(value.split("?")[0])


def _cap(name: str) -> str:
    return name[:1].upper() + name[1:]


def _dotted(path: list[Any]) -> str:
    out = ""
    for p in path:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out


def schema_error(err: jsonschema.ValidationError) -> TaskError:
    """Translate one JSON-Schema error to Runware's codes (missingX, invalidX, unsupported...)."""
    # A raised error has every field set (the stubs also allow "unset", for hand-made errors).
    instance: Any = err.instance
    schema: Any = err.schema
    value: Any = err.validator_value
    path = list(err.absolute_path)
    if "dependentSchemas" in err.schema_path:
        return TaskError(400, "invalidTtl", "ttl applies only when outputType is URL", "ttl")
    if err.validator == "required":
        missing = next(n for n in value if n not in instance)
        return TaskError(400, "missing" + _cap(missing), f"missing required parameter "
                         f"{_dotted([*path, missing])}", _dotted([*path, missing]))
    if err.validator == "additionalProperties":
        allowed = set(schema.get("properties", {}))
        extra = sorted(k for k in instance if k not in allowed)[0]
        return TaskError(400, "unsupportedParameter", f"parameter {_dotted([*path, extra])} "
                         "is not supported by this model", _dotted([*path, extra]))
    leaf = next((p for p in reversed(path) if isinstance(p, str)), "request")
    extra_fields: dict[str, Any] = {}
    if err.validator in ("enum", "const"):
        allowed_values = value
        extra_fields["allowedValues"] = (allowed_values if isinstance(allowed_values, list)
                                         else [allowed_values])
    for key, name in (("minimum", "min"), ("maximum", "max"), ("minLength", "min"),
                      ("maxLength", "max")):
        if key in schema:
            extra_fields[name] = schema[key]
    return TaskError(400, "invalid" + _cap(leaf), f"invalid value for {_dotted(path) or leaf}: "
                     f"{err.message[:200]}", _dotted(path) or None, **extra_fields)


class Simulator:
    """The task-level state machine behind the ASGI app."""

    def __init__(self, *, ledger: Ledger, images: ImageStore, injector: FaultInjector,
                 clock: Callable[[], float], sleep: Callable[[float], Awaitable[None]],
                 render: bool, default_ttl_s: float, journal: Journal | None = None) -> None:
        self.ledger, self.images, self.injector = ledger, images, injector
        self.clock, self.sleep, self.render_images = clock, sleep, render
        self.default_ttl_s = default_ttl_s
        self.journal = journal
        self.taken: dict[str, str] = {}  # taskUUID -> taskType, for every accepted task
        self.records: dict[str, TaskRecord] = {}
        # imageUUID -> image, unfetched URL, or (restored) its stored copy
        self.uploads: dict[str, Image.Image | str | StoredInput] = {}
        # imageUUID -> (restored task not rendered yet, result index): URL outputs of a past
        # process, rendered when first asked for
        self.restored_outputs: dict[str, tuple[TaskRecord, int]] = {}
        self._locks: dict[str, anyio.Lock] = {}
        if journal is not None:
            self._restore(journal.events)

    # ---- dispatch -------------------------------------------------------------------------
    async def run_tasks(self, tasks: list[Any], base_url: str) -> Outcome:
        out = Outcome()
        pending: list[TaskRecord] = []
        for task in tasks:
            if not isinstance(task, dict):
                out.errors.append((400, error_object("invalidPayload",
                                                     "every task must be a JSON object")))
                continue
            ttype = task.get("taskType")
            self.ledger.count(str(ttype))
            try:
                if ttype == "imageInference":
                    record, erred = await self._accept_inference(task)
                    if erred:  # billed, results made: the answer says otherwise
                        out.errors.append((500, error_object(
                            "internalError", "internal error (injected after billing)",
                            task_type="imageInference", task_uuid=record.task_uuid)))
                    elif param(record.request, "deliveryMethod") == "async":
                        out.data.append({"taskType": "imageInference",
                                         "taskUUID": record.task_uuid})
                    else:
                        pending.append(record)
                elif ttype == "imageUpload":
                    out.data.append(await self._upload(task, base_url))
                elif ttype in ("getResponse", "getTaskDetails"):
                    await self._recover(task, ttype, base_url, out)
                elif ttype is None:
                    raise TaskError(400, "missingTaskType", "missing taskType", "taskType")
                else:
                    raise TaskError(400, "unsupportedTaskType", f"taskType {ttype!r} is not "
                                    f"supported by the {SIMULATOR}", "taskType")
            except TaskError as exc:
                out.errors.append(exc.to_error(task))
        if pending:
            wait = max(r.ready_at for r in pending) - self.clock()
            if wait > 0:
                await self.sleep(wait)
            for record in pending:
                await self._resolve(record, force=True)
                self._answer(record, base_url, out, with_status=False)
        return out

    # ---- imageInference ------------------------------------------------------------------
    def _check_uuid(self, task: dict[str, Any]) -> str:
        uuid = task.get("taskUUID")
        if uuid is None:
            raise TaskError(400, "missingTaskUUID", "missing taskUUID", "taskUUID")
        if not is_uuid4(uuid):
            raise TaskError(400, "invalidTaskUUID", "taskUUID must be a UUID version 4",
                            "taskUUID")
        if uuid.lower() in self.taken:  # UUIDs compare case-insensitively (RFC 4122)
            self.ledger.duplicate(uuid.lower())
            if self.journal is not None:
                self.journal.append({"e": "duplicate", "uuid": uuid.lower()})
            raise TaskError(400, "conflictTaskUUID", "a task with this taskUUID was already "
                            "accepted; fetch its results with getResponse", "taskUUID")
        return uuid

    async def _accept_inference(self, task: dict[str, Any]) -> tuple[TaskRecord, bool]:
        sent = self._check_uuid(task)
        uuid = sent.lower()  # the key of every table; answers echo the UUID as sent
        model = task.get("model")
        if model is None:
            raise TaskError(400, "missingModel", "missing model", "model")
        if model not in models.MODELS:
            raise TaskError(400, "unsupportedModel", f"the {SIMULATOR} only runs "
                            f"{', '.join(models.MODELS)}", "model",
                            allowedValues=list(models.MODELS))
        if not _quick_check(model)(task):  # jsonschema says why (or that it is valid after all)
            err = jsonschema.exceptions.best_match(
                models.request_validator(model).iter_errors(task))
            if err is not None:
                raise schema_error(err)
        if all(self._cheap(v) for v in task["inputs"].values()):
            seed, mask, placeholder = self._inputs(task["inputs"])
        else:  # decoding inline or stored images would stall the event loop
            seed, mask, placeholder = await anyio.to_thread.run_sync(self._inputs,
                                                                     task["inputs"])
        keys: list[str] = []
        if self.journal is not None:  # the inputs are stored before the task is recorded
            keys = [self._input_key(task["inputs"][name], image)
                    for name, image in (("seedImage", seed), ("maskImage", mask))]
            missing = [(k, im) for k, im in zip(keys, (seed, mask), strict=True)
                       if not self.journal.has_image(k)]
            if missing:
                await anyio.to_thread.run_sync(
                    lambda: [self.journal.put_image(k, im) for k, im in missing])  # type: ignore[union-attr]
        self._check_uuid(task)  # again: a twin of this task may have been accepted meanwhile
        n = int(param(task, "numberResults"))
        faults, processing = self.injector.for_task(uuid, n)
        config = self.injector.config
        price = (config.price_usd if config.price_usd is not None
                 else models.get_model(model).price_per_image)
        record = self._record(sent, task, faults, self.clock() + processing, placeholder,
                              config.extra_images, price if config.report_cost else None)
        record.inputs = (seed, mask)
        delivered = len(record.results) - len(faults.blocked)
        if delivered and not faults.provider_timeout:
            self.ledger.charge(uuid, delivered, price)
        if self.journal is not None:
            self.journal.append({
                "e": "task", "uuid": uuid, "sent": sent, "request": task, "inputs": keys,
                "placeholder": placeholder, "timeout": faults.provider_timeout,
                "blocked": sorted(faults.blocked), "price": str(price),
                "extra": config.extra_images, "reported": config.report_cost})
        return record, faults.billed_then_error and not faults.provider_timeout

    def _record(self, sent: str, task: dict[str, Any], faults: TaskFaults, ready_at: float,
                placeholder: bool, extra: int, price: Decimal | None) -> TaskRecord:
        """Register an accepted task under its (lower-case) UUID, with its decided faults,
        its `extra` images beyond numberResults and the price it reports (None: none)."""
        uuid = sent.lower()
        record = TaskRecord(sent, "imageInference", task, ready_at, placeholder=placeholder,
                            price=price)
        record.results = [Result(i, engine.image_uuid(uuid, i), engine.result_seed(uuid, i))
                          for i in range(int(param(task, "numberResults")) + extra)]
        self.taken[uuid] = "imageInference"
        self.records[uuid] = record
        if faults.provider_timeout:
            record.error = error_object("timeoutProvider", "the provider did not answer in "
                                        "time (injected); retry with a new taskUUID",
                                        task_type="imageInference", task_uuid=sent)
            self.ledger.failed[uuid] = "timeoutProvider"
            return record
        for i in sorted(faults.blocked):
            record.results[i].error = error_object(
                "contentPolicyViolation", "result blocked by the content policy (injected)",
                task_type="imageInference", task_uuid=sent, resultIndex=i)
        return record

    def _cheap(self, value: str) -> bool:
        """True if resolving `value` needs no decoding (an upload in memory, a foreign URL)."""
        if is_uuid4(value):
            return isinstance(self.uploads.get(value), (Image.Image, str))
        return _foreign_url(value)

    def _input_key(self, value: str, image: Image.Image) -> str:
        """Where an input is stored: an upload under its own imageUUID, the rest by value."""
        if is_uuid4(value) and isinstance(self.uploads.get(value), (Image.Image, StoredInput)):
            return value
        return image_key(value, image.size)

    def _input(self, value: str, name: str) -> Image.Image | str:
        """An image, or the URL string when it cannot be fetched (placeholder later).
        May block (decoding, stored copies): the callers run it in a worker thread unless
        `_cheap()` says otherwise."""
        param_name = name if name == "image" else f"inputs.{name}"
        if is_uuid4(value):
            found = self.uploads.get(value)
            if isinstance(found, StoredInput):
                assert self.journal is not None
                found = self.uploads[value] = self.journal.get_image(found.key)
            if found is None:
                data = self._output_bytes(value)
                if data is None:
                    raise TaskError(400, "invalid" + _cap(name), f"{name}: no uploaded or "
                                    "generated image has this imageUUID", param_name)
                return engine.decode(data)
            return found
        if re.match(r"^https?://", value):
            own = _OWN_IMAGE.search(value.split("?")[0])
            data = self._output_bytes(own.group(1)) if own else None
            return engine.decode(data) if data else value
        try:
            return engine.decode(engine.inline_bytes(value))
        except engine.InputError as exc:
            raise TaskError(400, "invalid" + _cap(name), f"{name}: {exc}", param_name) from None

    def _output_bytes(self, image_uuid: str) -> bytes | None:
        """The bytes of one of this server's outputs: stored, or rendered now if it belongs to
        a task restored from the state directory; None if unknown or expired."""
        stored = self.images.get(image_uuid)
        if stored is not None:
            return stored.data
        found = self.restored_outputs.get(image_uuid)
        if found is None:
            return None
        record, index = found
        if record.results[index].image_bytes is None:
            self._render(record)
        return record.results[index].image_bytes

    def _inputs(self, inputs: dict[str, str]) -> tuple[Image.Image, Image.Image, bool]:
        seed = self._input(inputs["seedImage"], "seedImage")
        mask = self._input(inputs["maskImage"], "maskImage")
        placeholder = isinstance(seed, str) or isinstance(mask, str)
        if isinstance(seed, str):
            size = mask.size if isinstance(mask, Image.Image) else engine.PLACEHOLDER_SIZE
            seed = engine.placeholder_seed(seed, size)
        if isinstance(mask, str):
            mask = engine.placeholder_mask(seed.size)
        if seed.size != mask.size:
            raise TaskError(400, "invalidMaskImage", f"maskImage is {mask.width}x{mask.height}"
                            f" but seedImage is {seed.width}x{seed.height}: sizes must match",
                            "inputs.maskImage")
        return seed, mask, placeholder

    def _render(self, record: TaskRecord) -> None:
        """Render every result still without bytes. Blocking: runs in a worker thread; touches
        nothing shared but the record (publishing happens on the event loop)."""
        req = record.request
        fmt = param(req, "outputFormat")
        quality = int(param(req, "outputQuality"))
        style = req.get("providerSettings", {}).get("ideogram", {}).get("styleType", "AUTO")
        todo = [r for r in record.results if r.error is None and r.image_bytes is None]
        if not self.render_images:
            for res in todo:
                res.image_bytes = engine.tiny_image(fmt)
            return
        inputs = record.inputs
        if inputs is None:
            if record.load_inputs is None:
                return  # rendered meanwhile by another thread
            inputs = record.load_inputs()
        seed, mask = inputs
        for res in todo:
            res.image_bytes = engine.edit(seed, mask, prompt=req["positivePrompt"], style=style,
                                          task_uuid=record.task_uuid, index=res.index,
                                          output_format=fmt, quality=quality)

    async def _resolve(self, record: TaskRecord, force: bool = False) -> None:
        """Render a task's results once it is ready (or now, with `force`)."""
        if record.done or (not force and self.clock() < record.ready_at):
            return
        lock = self._locks.setdefault(record.task_uuid, anyio.Lock())
        async with lock:
            if record.done:
                return
            if self.render_images:
                await anyio.to_thread.run_sync(self._render, record)
            else:
                self._render(record)  # a fixed tiny image: a thread hop would cost more
            req = record.request
            fmt = param(req, "outputFormat")
            for res in record.results:
                self.restored_outputs.pop(res.image_uuid, None)
                if res.image_bytes is not None and param(req, "outputType") == "URL":
                    self.images.put(res.image_uuid, res.image_bytes, engine.MIME[fmt],
                                    float(req.get("ttl", self.default_ttl_s)))
            record.rendered, record.inputs, record.load_inputs = True, None, None
        self._locks.pop(record.task_uuid, None)

    async def output(self, image_uuid: str) -> None:
        """Make a restored task's URL output downloadable (renders it on first request)."""
        found = self.restored_outputs.get(image_uuid)
        if found is not None:
            await self._resolve(found[0], force=True)

    def _item(self, record: TaskRecord, res: Result, base_url: str) -> dict[str, Any]:
        req = record.request
        fmt = param(req, "outputFormat")
        item: dict[str, Any] = {"taskType": "imageInference", "taskUUID": record.task_uuid,
                                "imageUUID": res.image_uuid}
        kind = param(req, "outputType")
        if kind == "URL":
            item["imageURL"] = f"{base_url}/image/{res.image_uuid}.{engine.EXT[fmt]}"
        else:
            assert res.image_bytes is not None
            b64 = base64.b64encode(res.image_bytes).decode("ascii")
            item["imageBase64Data" if kind == "base64Data" else "imageDataURI"] = (
                b64 if kind == "base64Data" else f"data:{engine.MIME[fmt]};base64,{b64}")
        item["seed"] = res.seed
        if req.get("providerSettings", {}).get("ideogram", {}).get("magicPrompt") == "ON":
            # What a provider that rewrote the prompt may answer with: the prompt it used.
            item["positivePrompt"] = f"{req['positivePrompt']} (rewritten by magicPrompt)"
        if req.get("safety", {}).get("checkContent") or req.get("safety", {}).get("mode") == "fast":
            item["NSFWContent"] = False
        if req.get("includeCost") and record.price is not None:
            item["cost"] = float(record.price)
        item["simulator"] = {"name": SIMULATOR, "placeholderInputs": record.placeholder,
                             "resultIndex": res.index}
        ignored = [k for k in ("webhookURL", "uploadEndpoint") if k in req]
        if ignored:  # no outbound network here: accepted, never called
            item["simulator"]["notCalled"] = ignored
        if record.placeholder:
            w, h = engine.PLACEHOLDER_SIZE
            item["simulator"]["note"] = (f"input URLs cannot be fetched here: placeholder seed "
                                         f"({w}x{h} unless the other input sets the size) and "
                                         "a centred-rectangle mask were used")
        return item

    def _answer(self, record: TaskRecord, base_url: str, out: Outcome, with_status: bool
                ) -> None:
        """Append a task's current state to `out` (status fields for getResponse)."""
        if record.error is not None:
            out.errors.append((500, {**record.error, "status": "error"} if with_status
                               else record.error))
            return
        if not record.done:
            out.data.append({"taskType": record.task_type, "taskUUID": record.task_uuid,
                             "status": "processing"})
            return
        for res in record.results:
            if res.error is not None:
                out.errors.append((400, {**res.error, "status": "error"} if with_status
                                   else res.error))
            else:
                item = self._item(record, res, base_url)
                out.data.append({**item, "status": "success"} if with_status else item)

    # ---- imageUpload, getResponse, getTaskDetails -----------------------------------------
    async def _upload(self, task: dict[str, Any], base_url: str) -> dict[str, Any]:
        uuid = self._check_uuid(task)
        value = task.get("image")
        if not isinstance(value, str) or not value:
            raise TaskError(400, "missingImage", "missing image", "image")
        if _foreign_url(value):
            image: Image.Image | str = value
        else:
            image = await anyio.to_thread.run_sync(self._stored_upload, value, uuid.lower())
        self._check_uuid(task)
        self.taken[uuid.lower()] = "imageUpload"
        image_uuid = engine.image_uuid(uuid.lower(), -1)
        self.uploads[image_uuid] = image
        if self.journal is not None:
            self.journal.append({"e": "upload", "uuid": uuid.lower(), "image": image_uuid,
                                 "url": image if isinstance(image, str) else None})
        item: dict[str, Any] = {"taskType": "imageUpload", "taskUUID": uuid,
                                "imageUUID": image_uuid,
                                "simulator": {"name": SIMULATOR,
                                              "placeholderInputs": isinstance(image, str)}}
        if isinstance(image, Image.Image):
            item["simulator"]["size"] = [image.width, image.height]
        return item

    def _stored_upload(self, value: str, task_uuid: str) -> Image.Image | str:
        """Decode (and downscale) an upload; with a journal, store it first. Blocking."""
        image = self._input(value, "image")
        if isinstance(image, Image.Image):
            image = engine.downscale(image)
            if self.journal is not None:
                self.journal.put_image(engine.image_uuid(task_uuid, -1), image)
        return image

    async def _recover(self, task: dict[str, Any], ttype: str, base_url: str, out: Outcome
                       ) -> None:
        uuid = task.get("taskUUID")
        if not is_uuid4(uuid):
            raise TaskError(400, "invalidTaskUUID", "taskUUID must be a UUID version 4",
                            "taskUUID")
        record = self.records.get(uuid.lower())
        if record is not None:
            await self._resolve(record)
        if ttype == "getResponse":
            if record is not None:  # an unknown UUID answers like a running one: no items
                self._answer(record, base_url, out, with_status=True)
            return
        if record is None:
            raise TaskError(404, "taskNotFound", "no task with this taskUUID", "taskUUID")
        inner = Outcome()
        self._answer(record, base_url, inner, with_status=True)
        status = ("error" if record.error else "processing" if not record.done else "success")
        out.data.append({"taskType": "getTaskDetails", "taskUUID": uuid, "status": status,
                         "request": record.request,
                         "response": {"data": inner.data, "errors": [e for _, e in inner.errors]},
                         "simulator": {"name": SIMULATOR}})

    # ---- state directory -------------------------------------------------------------------
    def _restore(self, events: list[dict[str, Any]]) -> None:
        """Replay a journal: uploads, accepted tasks (ready at once, rendered on demand) and
        the ledger's charges, failures and duplicate attempts."""
        assert self.journal is not None
        load = self.journal.get_image
        for event in events:
            kind, uuid = event["e"], str(event.get("uuid"))
            if kind == "upload":
                self.taken[uuid] = "imageUpload"
                self.uploads[event["image"]] = event["url"] or StoredInput(event["image"])
            elif kind == "task":
                faults = TaskFaults(provider_timeout=event["timeout"],
                                    blocked=frozenset(event["blocked"]))
                reported = event.get("reported", True)
                record = self._record(event["sent"], event["request"], faults, self.clock(),
                                      event["placeholder"], int(event.get("extra", 0)),
                                      Decimal(event["price"]) if reported else None)
                seed_key, mask_key = event["inputs"]
                record.load_inputs = lambda s=seed_key, m=mask_key: (load(s), load(m))
                delivered = len(record.results) - len(faults.blocked)
                if delivered and not faults.provider_timeout:
                    self.ledger.charge(uuid, delivered, Decimal(event["price"]))
                    if param(record.request, "outputType") == "URL":
                        for res in record.results:
                            if res.error is None:
                                self.restored_outputs[res.image_uuid] = (record, res.index)
            elif kind == "duplicate":
                self.ledger.duplicate(uuid)
