"""The roles a user may hold; plain values, so other domains may read them."""


class Role:
    """What a user may do: viewers read, operators act, admins also manage access."""

    VIEWER = "viewer"
    OPERATOR = "operator"
    ADMIN = "admin"

    ALL = (VIEWER, OPERATOR, ADMIN)
    RANK = {VIEWER: 0, OPERATOR: 1, ADMIN: 2}

    @classmethod
    def allows(cls, role: str, needed: str) -> bool:
        return cls.RANK.get(role, -1) >= cls.RANK[needed]
