Feature: Authentication
  The six scenarios of the auth design: loopback convenience, tokens everywhere else.

  Scenario: Loopback without a token while tokens are optional
    Given tokens are configured but optional on loopback
    And a server with one mock pool
    When I submit task "local" for 2 tokens
    Then task "local" is admitted

  Scenario: Loopback without a token while tokens are required
    Given tokens are configured and required
    And a server with one mock pool
    When I submit task "local" for 2 tokens
    Then the answer is 401 MISSING_TOKEN

  Scenario: A non-loopback bind without a token refuses to start
    When I start a server bound to 0.0.0.0 without a token
    Then it exits with status 2 naming NON_LOOPBACK_WITHOUT_TOKEN

  Scenario: A wrong token is refused even on loopback
    Given tokens are configured but optional on loopback
    And I send the token "not-the-token"
    And a server with one mock pool
    When I ask for the capabilities
    Then the answer is 401 BAD_TOKEN

  Scenario: The right token is accepted
    Given tokens are configured and required
    And I send the configured token
    And a server with one mock pool
    When I submit task "remote" for 2 tokens
    Then task "remote" is admitted
    When I read the stream of task "remote"
    Then the stream of task "remote" ends with end

  Scenario: Worker registration needs the token even on an open loopback server
    Given a server with one mock pool
    When I register a worker
    Then the answer is 401 MISSING_TOKEN
