"""Tests of the teaching kit, attnlens.tiny (a package, so their names do not collide with tests/)."""
