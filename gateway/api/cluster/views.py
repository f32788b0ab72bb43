"""The cluster: summary, hosts, queues, users; admin open/close of hosts and queues."""
from __future__ import annotations

import re

from flask.views import MethodView

from ...errors import NotFound
from ...models import HOST_ACTIONS, QUEUE_ACTIONS, UserInfo
from ..common import Blueprint, current_user, document_errors, gw, ok, require_admin
from .schemas import (ClusterEnvelope, HostEnvelope, HostListEnvelope, QueueEnvelope, QueueListEnvelope,
                      UserEnvelope, UserListEnvelope)

blp = Blueprint("cluster", __name__, description="The cluster's hosts, queues and users")
NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.@+-]{0,127}\Z")


def _find(items, name, what):
    if NAME_RE.match(name):
        for item in items:
            if item.name == name:
                return item
    raise NotFound(f"no such {what}: {name[:128]!r}")


def _call(hook, **kw):
    return gw().scheduler.call(hook, **kw)


@blp.route("/cluster")
class Cluster(MethodView):
    @blp.response(200, ClusterEnvelope)
    @document_errors(blp, 401, 501, 502, 503, 504)
    def get(self):
        """Cluster summary: scheduler, hosts, CPUs, queues, jobs by state"""
        return ok({"cluster": _call("cluster_info")})


@blp.route("/hosts")
class Hosts(MethodView):
    @blp.response(200, HostListEnvelope)
    @document_errors(blp, 401, 501, 502, 503, 504)
    def get(self):
        """List hosts"""
        return ok({"hosts": _call("list_hosts")})


@blp.route("/hosts/<name>")
class HostDetail(MethodView):
    @blp.response(200, HostEnvelope)
    @document_errors(blp, 401, 404, 501, 502, 503, 504)
    def get(self, name):
        """One host"""
        return ok({"host": _find(_call("list_hosts"), name, "host")})


@blp.route("/hosts/<name>/<any({}):action>".format(",".join(HOST_ACTIONS)))
class HostAction(MethodView):
    @blp.response(200, HostEnvelope)
    @document_errors(blp, 401, 403, 404, 409, 501, 502, 503, 504)
    def post(self, name, action):
        """Open or close a host (admins only)"""
        user = require_admin()
        _find(_call("list_hosts"), name, "host")
        _call("control_host", user=user, host=name, action=action)
        return ok({"host": _find(_call("list_hosts"), name, "host")})


@blp.route("/queues")
class Queues(MethodView):
    @blp.response(200, QueueListEnvelope)
    @document_errors(blp, 401, 501, 502, 503, 504)
    def get(self):
        """List queues"""
        return ok({"queues": _call("list_queues")})


@blp.route("/queues/<name>")
class QueueDetail(MethodView):
    @blp.response(200, QueueEnvelope)
    @document_errors(blp, 401, 404, 501, 502, 503, 504)
    def get(self, name):
        """One queue"""
        return ok({"queue": _find(_call("list_queues"), name, "queue")})


@blp.route("/queues/<name>/<any({}):action>".format(",".join(QUEUE_ACTIONS)))
class QueueAction(MethodView):
    @blp.response(200, QueueEnvelope)
    @document_errors(blp, 401, 403, 404, 409, 501, 502, 503, 504)
    def post(self, name, action):
        """Open, close, activate or inactivate a queue (admins only)"""
        user = require_admin()
        _find(_call("list_queues"), name, "queue")
        _call("control_queue", user=user, queue=name, action=action)
        return ok({"queue": _find(_call("list_queues"), name, "queue")})


@blp.route("/users")
class Users(MethodView):
    @blp.response(200, UserListEnvelope)
    @document_errors(blp, 401, 501, 502, 503, 504)
    def get(self):
        """List users with their job counts"""
        current_user()
        return ok({"users": _call("list_users")})


@blp.route("/users/<name>")
class UserDetail(MethodView):
    @blp.response(200, UserEnvelope)
    @document_errors(blp, 401, 404, 501, 502, 503, 504)
    def get(self, name):
        """One user's job counts (yours are zeros while you have no jobs: not a 404)"""
        user = current_user()
        users = _call("list_users")
        if name == user.name and not any(u.name == name for u in users):
            return ok({"user": UserInfo(name=name)})
        return ok({"user": _find(users, name, "user")})
