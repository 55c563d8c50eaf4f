import grpc

from service import errors
from service.grpc.status import STATUS_CODES, status_code_for


def test_every_domain_error_has_a_status():
    domain = [
        cls
        for cls in vars(errors).values()
        if isinstance(cls, type) and issubclass(cls, errors.AdapterdError)
    ]
    unmapped = [
        cls.__name__
        for cls in domain
        if cls is not errors.AdapterdError and cls not in STATUS_CODES
    ]
    assert unmapped == []


def test_subclasses_inherit_their_parents_status():
    class AdapterMissing(errors.NotFoundError):
        pass

    assert status_code_for(AdapterMissing("x")) is grpc.StatusCode.NOT_FOUND
    assert status_code_for(errors.AdapterdError("x")) is grpc.StatusCode.INTERNAL
