"""Tests of attnlens.viz, one file per module (a package, so their names do not collide with tests/)."""
