"""The registry's HTTP endpoint (issue 14, ``twistd irp --http-listen``): CRLs and CA
certificates over plain HTTP, and an RFC 6960 OCSP responder (docs/http.rst is the spec).

* :mod:`~irp.server.http.ocsp`: the OCSP core (parse, decide, sign), sans-I/O;
* :mod:`~irp.server.http.responder`: statuses from the store, responses cached until the
  next revocation;
* :mod:`~irp.server.http.credentials`: the delegated responder certificates;
* :mod:`~irp.server.http.publisher`: CRLs and CA certificates by name, the health check;
* :mod:`~irp.server.http.site`: the twisted.web adapter (routes, caps, timeouts);
* :mod:`~irp.server.http.host`: start and stop inside the registry service.

The URLs certificates name are built in :mod:`irp.server.ca.issuance`.
"""
