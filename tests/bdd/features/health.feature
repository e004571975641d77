Feature: Health and capabilities
  A client discovers what the server serves, and whether each pool is ready, before submitting.

  Scenario: Capabilities list every pool, and health tells ready from not ready
    Given a server with pools "p0" on GPU 0, "p1" on GPU 1 that never gets ready, and "p2" on GPU 1
    When I ask for the capabilities
    Then the capabilities list pools "p0", "p1", "p2" with engine versions
    And pool "p0" is live and ready
    And pool "p1" is not ready
    When I ask for the health of pool "nope"
    Then the answer is 404 NOT_FOUND

  Scenario: The served OpenAPI documents and metrics are reachable
    Given a server with one mock pool
    When I ask for "/openapi/data.yaml"
    Then the answer is 200
    When I ask for "/metrics"
    Then the answer is 200
