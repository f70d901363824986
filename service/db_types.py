"""Column types shared by every domain's models."""

from sqlalchemy import BigInteger, Integer

# SQLite only auto-increments an INTEGER PRIMARY KEY; PostgreSQL gets a 64-bit key.
BigId = BigInteger().with_variant(Integer(), "sqlite")
# Amounts in minor units: 64-bit, as yen or dong totals outgrow 32 bits.
Money = BigInteger()
