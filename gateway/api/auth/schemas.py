from marshmallow import RAISE, Schema, fields, validate

from ..common import envelope, no_control_chars


class LoginSchema(Schema):
    class Meta:
        unknown = RAISE

    username = fields.String(required=True, validate=[validate.Length(min=1, max=64), no_control_chars])
    password = fields.String(required=True, validate=validate.Length(min=1, max=1024),
                             metadata={"format": "password"})


class TokenSchema(Schema):
    token = fields.String(required=True)
    userName = fields.String(required=True)
    admin = fields.Boolean()
    timeoutMinutes = fields.Float()


class LoginResultSchema(Schema):
    token = fields.Nested(TokenSchema)


LoginEnvelope = envelope("LoginEnvelope", LoginResultSchema)
LogoutEnvelope = envelope("LogoutEnvelope", None)
