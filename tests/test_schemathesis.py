"""The served OpenAPI document against the running product (issue 8, part 9): schemathesis draws
requests from the document for every operation and checks each answer: never a 5xx, a status the
document lists, the content type it lists, and a body that matches its schema.

The app is the real one (every tier on the instance's services, a fresh catalog and Redis
database). POST /v1/jobs/{name}/run is left out: it runs jobs (moves boundaries, deletes data).
Requests are drawn both valid for the document (positive) and invalid (negative: the answer must
then be a documented 4xx). Examples are bounded (derandomized) so the module takes under two minutes.
"""
from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase
from hypothesis import settings as hsettings
from schemathesis.checks import (content_type_conformance, not_a_server_error, response_schema_conformance,
                                 status_code_conformance)

from router.openapi import openapi_document
from tests.api_support import isolated_settings
from tierstore.app import build_app, close_app

CHECKS = (not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance)
MAX_EXAMPLES = 25


@pytest.fixture(scope="module")
def app(settings):
    app = build_app(isolated_settings(settings, "schemathesis", redis_db=43))
    yield app
    close_app(app)


@pytest.fixture(scope="module")
def api_schema(app):
    # the document is OpenAPI 3.1 (JSON Schema 2020-12), which schemathesis 3.x supports behind a flag
    schemathesis.experimental.OPEN_API_3_1.enable()
    try:
        yield schemathesis.from_dict(openapi_document(), app=app, data_generation_methods=[
            schemathesis.DataGenerationMethod.positive, schemathesis.DataGenerationMethod.negative],
        ).exclude(path="/v1/jobs/{name}/run")
    finally:
        schemathesis.experimental.OPEN_API_3_1.disable()


schema = schemathesis.from_pytest_fixture("api_schema")


@schema.parametrize()
@hsettings(max_examples=MAX_EXAMPLES, deadline=None, derandomize=True, database=None,
           phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
def test_every_operation_answers_as_the_document_says(case):
    response = case.call_wsgi()
    case.validate_response(response, checks=CHECKS)


def test_the_jobs_run_operation_is_the_only_one_left_out(api_schema):
    operations = {(op.ok().method.upper(), op.ok().path) for op in api_schema.get_all_operations()}
    documented = {(method.upper(), path) for path, item in openapi_document()["paths"].items() for method in item}
    assert documented - operations == {("POST", "/v1/jobs/{name}/run")}
