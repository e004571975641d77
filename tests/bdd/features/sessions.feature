Feature: Sessions and budgets
  Tasks of one session share its budget; the server says what is left and refuses what would
  not fit, without a retry that could succeed.

  Scenario: A token budget is spent, shown and enforced
    Given a server whose sessions have a budget of 20 tokens
    When I submit task "first" for 8 tokens in session "chat"
    Then task "first" is admitted
    And the admission says 12 tokens remain
    When I read the stream of task "first"
    And I look up session "chat"
    Then the session has 12 tokens left after 1 turn
    When I submit task "second" for 13 tokens in session "chat"
    Then the answer is 429 ADMISSION_REJECT
    And the refusal is not retriable and is labelled session-budget

  Scenario: Forgetting a session restores its budget
    Given a server whose sessions have a budget of 10 tokens
    When I submit task "first" for 10 tokens in session "chat"
    And I read the stream of task "first"
    And I forget session "chat"
    Then the answer is 204
    When I submit task "again" for 10 tokens in session "chat"
    Then task "again" is admitted
    And the admission says 0 tokens remain

  Scenario: An unknown session, and a malformed session id
    Given a server with one mock pool
    When I look up session "never-used"
    Then the answer is 404 NOT_FOUND
    When I look up the session "not-a-uuid"
    Then the answer is 400 INVALID_PARAMS
