from marshmallow import Schema, fields

from ..common import envelope


class HostSchema(Schema):
    name = fields.String(required=True)
    state = fields.String(metadata={"description": "ok, closed, down or unknown"})
    nativeState = fields.String(attribute="native_state", allow_none=True)
    cpus = fields.Integer(allow_none=True)
    maxSlots = fields.Integer(attribute="max_slots", allow_none=True)
    njobs = fields.Integer()
    running = fields.Integer()
    suspended = fields.Integer()
    memoryMB = fields.Integer(attribute="memory_mb", allow_none=True)
    reason = fields.String(allow_none=True)


class QueueSchema(Schema):
    name = fields.String(required=True)
    open = fields.Boolean(metadata={"description": "accepts submissions"})
    active = fields.Boolean(metadata={"description": "dispatches jobs"})
    nativeState = fields.String(attribute="native_state", allow_none=True)
    priority = fields.Integer(allow_none=True)
    isDefault = fields.Boolean(attribute="is_default")
    maxSlots = fields.Integer(attribute="max_slots", allow_none=True)
    timeLimitMinutes = fields.Integer(attribute="time_limit_minutes", allow_none=True)
    hosts = fields.List(fields.String())
    njobs = fields.Integer()
    pending = fields.Integer()
    running = fields.Integer()
    suspended = fields.Integer()


class UserInfoSchema(Schema):
    name = fields.String(required=True)
    njobs = fields.Integer()
    pending = fields.Integer()
    running = fields.Integer()
    suspended = fields.Integer()
    maxJobs = fields.Integer(attribute="max_jobs", allow_none=True)


class ClusterSchema(Schema):
    name = fields.String()
    scheduler = fields.String()
    version = fields.String(allow_none=True)
    master = fields.String(allow_none=True)
    hosts = fields.Integer()
    cpus = fields.Integer()
    queues = fields.Integer()
    jobs = fields.Dict(keys=fields.String(), values=fields.Integer())


def _one(name, key, schema):
    return envelope(name, Schema.from_dict({key: fields.Nested(schema)}, name=name + "Data"))


def _many(name, key, schema):
    return envelope(name, Schema.from_dict({key: fields.List(fields.Nested(schema))}, name=name + "Data"))


ClusterEnvelope = _one("ClusterEnvelope", "cluster", ClusterSchema)
HostEnvelope = _one("HostEnvelope", "host", HostSchema)
HostListEnvelope = _many("HostListEnvelope", "hosts", HostSchema)
QueueEnvelope = _one("QueueEnvelope", "queue", QueueSchema)
QueueListEnvelope = _many("QueueListEnvelope", "queues", QueueSchema)
UserEnvelope = _one("UserEnvelope", "user", UserInfoSchema)
UserListEnvelope = _many("UserListEnvelope", "users", UserInfoSchema)
