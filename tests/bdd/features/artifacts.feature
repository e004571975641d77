Feature: Artifacts and stream traces
  Documents are stored by their content, and every finished stream leaves a trace to look at.

  Scenario: A stored document is addressed by its content
    Given a server with one mock pool
    When I store a plan tagged "project:demo"
    Then the answer is 201
    When I store the same plan again
    Then the answer is 200 with the same id
    When I fetch that artifact
    Then it holds the plan with tag "project:demo"

  Scenario: A finished stream leaves a trace
    Given a server with one mock pool
    When I submit task "traced" for 3 tokens
    And I read the stream of task "traced"
    And I list the artifacts of task "traced"
    Then the listing holds the trace named by the end frame of task "traced"

  Scenario: Ids and tags that look like paths are refused
    Given a server with one mock pool
    When I fetch the artifact "..%5C..%5Cetc%5Cpasswd"
    Then the answer is 400 INVALID_PARAMS
    When I store a plan tagged "../../etc"
    Then the answer is 400 INVALID_PARAMS
