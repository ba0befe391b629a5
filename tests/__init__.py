"""The test suite: one folder per gr/ package (tests/model/ tests gr/model/),
shared helpers in tests/support/, cross-cutting tests here. Every folder is
a package, so tests import each other as `tests.serve.test_serving` and
two folders may hold files of the same name."""
