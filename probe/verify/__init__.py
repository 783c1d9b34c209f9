"""`probe verify`: the post-deploy verification hook (issue 10). A deploy pipeline runs it after each step of a
rollout; its exit code stops or continues the rollout (0 verified, 1 failed, 2 usage, 3 inconclusive).

    probe.verify.judge       observations in, verdicts out (pure): the judging rules
    probe.verify.source      where observations come from: the Source protocol
    probe.verify.direct      this host probes (the direct mode)
    probe.verify.aggregator  the aggregator's online agents probe, on its command (the `--aggregator` mode)
    probe.verify.api         the aggregator's verification API, as both ends speak it
    probe.verify.verifier    one pass: verdicts as they come, ended the moment the pass's verdict is certain
    probe.verify.session     passes over a soak window, the baseline comparison, the overall verdict
    probe.verify.baseline    the canary against a control group (pure)
    probe.verify.report      the JSON report (a contract: add fields, never rename)
    probe.verify.render      the human summary;  probe.verify.junit: JUnit XML for CI
    probe.verify.select      servers by name, location or file; durations and shares
    probe.verify.run         all of it put together: `execute`
    probe.verify.cli         the argparse command

The `--aggregator URL` mode is a second Source (the aggregator asks every online agent and hands back their results,
each with its control check); the judging, the soak, the baseline and the output are shared. Importing this package
imports nothing.
"""
