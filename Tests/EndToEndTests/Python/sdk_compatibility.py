"""Drives a Batch gateway with Tencent Cloud's official Python SDK (tencentcloud-sdk-python-batch).

Environment: BATCH_ENDPOINT (host:port), BATCH_PROTOCOL (http or https), BATCH_SECRET_ID, BATCH_SECRET_KEY.
Prints one line per step; exits non-zero with the failing step on stderr.
"""
import base64
import json
import os
import sys
import time

from tencentcloud.batch.v20170312 import batch_client, models
from tencentcloud.common import credential
from tencentcloud.common.exception.tencent_cloud_sdk_exception import TencentCloudSDKException
from tencentcloud.common.profile.client_profile import ClientProfile
from tencentcloud.common.profile.http_profile import HttpProfile

ENDPOINT = os.environ["BATCH_ENDPOINT"]
PROTOCOL = os.environ.get("BATCH_PROTOCOL", "http")


def client(secret_key=None):
    cred = credential.Credential(os.environ["BATCH_SECRET_ID"], secret_key or os.environ["BATCH_SECRET_KEY"])
    profile = ClientProfile(httpProfile=HttpProfile(protocol=PROTOCOL, endpoint=ENDPOINT, reqTimeout=30))
    return batch_client.BatchClient(cred, "ap-guangzhou", profile)


batch = client()


def call(action, params):
    """A typed call: the request model is built from `params`, as an SDK user would."""
    request = getattr(models, action + "Request")()
    request.from_json_string(json.dumps(params))
    response = getattr(batch, action)(request)
    return json.loads(response.to_json_string())


def check(condition, message):
    if not condition:
        print("FAILED: " + message, file=sys.stderr)
        sys.exit(1)


def wait_for(job_id, states=("SUCCEED", "FAILED"), seconds=120):
    deadline = time.time() + seconds
    while time.time() < deadline:
        job = call("DescribeJob", {"JobId": job_id})
        if job["JobState"] in states:
            return job
        time.sleep(0.2)
    check(False, "job %s did not reach %s" % (job_id, states))


def step(name, value=""):
    print("ok %s %s" % (name, value))


# Compute environments.
env = call("CreateComputeEnv", {"ComputeEnv": {"EnvName": "sdk-env", "DesiredComputeNodeCount": 1,
                                               "EnvDescription": "made by the SDK",
                                               "Tags": [{"Key": "team", "Value": "genomics"}]},
                                "Placement": {"Zone": "ap-guangzhou-2"}})["EnvId"]
step("CreateComputeEnv", env)
described = call("DescribeComputeEnv", {"EnvId": env})
check(described["EnvName"] == "sdk-env" and described["DesiredComputeNodeCount"] == 1, "DescribeComputeEnv")
listed = call("DescribeComputeEnvs", {"Filters": [{"Name": "tag:team", "Values": ["genomics"]}]})
check([e["EnvId"] for e in listed["ComputeEnvSet"]] == [env], "DescribeComputeEnvs by tag")
call("ModifyComputeEnv", {"EnvId": env, "EnvName": "sdk-env-renamed"})
info = call("DescribeComputeEnvCreateInfo", {"EnvId": env})
check(info["EnvName"] == "sdk-env-renamed", "ModifyComputeEnv then DescribeComputeEnvCreateInfo")
check(call("DescribeComputeEnvCreateInfos", {"EnvIds": [env]})["TotalCount"] == 1, "DescribeComputeEnvCreateInfos")
step("compute environment actions")

# Task templates.
template = call("CreateTaskTemplate", {
    "TaskTemplateName": "hello-template",
    "TaskTemplateInfo": {"TaskName": "hello", "TaskInstanceNum": 2, "EnvId": env,
                         "Application": {"DeliveryForm": "LOCAL",
                                         "Command": "echo hello from $BATCH_TASK_INSTANCE_INDEX"},
                         "EnvVars": [{"Name": "SECRET_TOKEN", "Value": "s3cr3t-value"}]}})["TaskTemplateId"]
templates = call("DescribeTaskTemplates", {"TaskTemplateIds": [template]})
check(templates["TotalCount"] == 1, "DescribeTaskTemplates")
check(templates["TaskTemplateSet"][0]["TaskTemplateInfo"]["EnvVars"][0]["Value"] == "******",
      "DescribeTaskTemplates masks env var values")
call("ModifyTaskTemplate", {"TaskTemplateId": template, "TaskTemplateDescription": "says hello"})
step("task template actions", template)

# Jobs: idempotent submission, reads, logs.
job_spec = {"JobName": "sdk-job", "Tags": [{"Key": "team", "Value": "genomics"}],
            "Tasks": [{"TaskName": "hello", "TaskInstanceNum": 3, "EnvId": env,
                       "Application": {"DeliveryForm": "LOCAL",
                                       "Command": "echo hello $BATCH_TASK_INSTANCE_INDEX of $BATCH_TASK_INSTANCE_NUM"}}]}
placement = {"Zone": "ap-guangzhou-2"}
job = call("SubmitJob", {"Placement": placement, "Job": job_spec, "ClientToken": "sdk-token-1"})["JobId"]
again = call("SubmitJob", {"Placement": placement, "Job": job_spec, "ClientToken": "sdk-token-1"})["JobId"]
check(again == job, "the same ClientToken returns the same JobId")
final = wait_for(job)
check(final["JobState"] == "SUCCEED", "sdk-job succeeded: %s" % final["JobState"])
jobs = call("DescribeJobs", {"Filters": [{"Name": "job-name", "Values": ["sdk-job"]}]})
check(jobs["TotalCount"] == 1 and jobs["JobSet"][0]["JobId"] == job, "DescribeJobs by name")
check(call("DescribeJobs", {"JobIds": [job]})["JobSet"][0]["TaskMetrics"]["SucceedCount"] == 1, "DescribeJobs by id")
submit_info = call("DescribeJobSubmitInfo", {"JobId": job})
check(submit_info["Tasks"][0]["TaskInstanceNum"] == 3, "DescribeJobSubmitInfo")
task = call("DescribeTask", {"JobId": job, "TaskName": "hello",
                             "Filters": [{"Name": "task-instance-state", "Values": ["SUCCEED"]}]})
check(task["TaskInstanceTotalCount"] == 3, "DescribeTask with a state filter")
logs = call("DescribeTaskLogs", {"JobId": job, "TaskName": "hello", "TaskInstanceIndexes": [2]})
stdout = base64.b64decode(logs["TaskInstanceLogSet"][0]["StdoutLog"]).decode()
check(stdout == "hello 2 of 3\n", "DescribeTaskLogs: %r" % stdout)
step("SubmitJob, DescribeJob, DescribeJobs, DescribeTask, DescribeTaskLogs", job)

# A job from the template (TaskTemplateId is Batch's addition, sent with the SDK's common call).
from_template = batch.call_json("SubmitJob", {"Job": {"JobName": "from-template",
                                                      "Tasks": [{"TaskName": "hello", "TaskTemplateId": template}]}})
template_job = from_template["Response"]["JobId"]
check(wait_for(template_job)["JobState"] == "SUCCEED", "a job from a template succeeded")
check(call("DescribeTask", {"JobId": template_job, "TaskName": "hello"})["TaskInstanceTotalCount"] == 2,
      "the template's TaskInstanceNum applies")
step("a job from a task template", template_job)

# Termination, retry and deletion.
long_job = call("SubmitJob", {"Job": {"JobName": "long", "Tasks": [
    {"TaskName": "sleep", "EnvId": env, "Application": {"DeliveryForm": "LOCAL", "Command": "sleep 300"}},
    {"TaskName": "after", "EnvId": env, "Application": {"DeliveryForm": "LOCAL", "Command": "true"}}],
    "Dependences": [{"StartTask": "sleep", "EndTask": "after"}]}})["JobId"]
wait_for(long_job, states=("RUNNING", "RUNNABLE"))
try:
    call("DeleteJob", {"JobId": long_job})
    check(False, "DeleteJob of an unfinished job was accepted")
except TencentCloudSDKException as error:
    check(error.get_code() == "ResourceInUse.Job", "DeleteJob of a running job: %s" % error.get_code())
call("TerminateJob", {"JobId": long_job})
terminated = wait_for(long_job)
check(terminated["JobState"] == "FAILED", "TerminateJob ends the job FAILED")
check("TerminateJob" in (terminated.get("StateReason") or ""), "the reason names TerminateJob")
failing = call("SubmitJob", {"Job": {"JobName": "failing", "Tasks": [
    {"TaskName": "fail", "EnvId": env, "Application": {"DeliveryForm": "LOCAL", "Command": "exit 4"}}]}})["JobId"]
check(wait_for(failing)["JobState"] == "FAILED", "the failing job failed")
call("RetryJobs", {"JobIds": [failing]})
# RetryJobs is asynchronous, as on Tencent Cloud: wait until the instance's second attempt (Batch's `Attempt`
# field, read with the SDK's common call) has ended.
deadline = time.time() + 120
while True:
    retried = batch.call_json("DescribeTask", {"JobId": failing, "TaskName": "fail"})["Response"]["TaskInstanceSet"][0]
    if retried["Attempt"] == 2 and retried["TaskInstanceState"] == "FAILED":
        break
    check(time.time() < deadline, "the retried instance did not run again: %s" % retried)
    time.sleep(0.2)
check(retried["ExitCode"] == 4, "the retried instance ran again")
check(wait_for(failing)["JobState"] == "FAILED", "the retried job failed again")
for job_id in (job, template_job, long_job, failing):
    call("DeleteJob", {"JobId": job_id})
check(call("DescribeJobs", {})["TotalCount"] == 0, "every job deleted")
step("TerminateJob, RetryJobs, DeleteJob")

# What this installation offers.
types = call("DescribeAvailableCvmInstanceTypes", {})["InstanceTypeConfigSet"]
check(len(types) > 0 and types[0]["InstanceFamily"] == "PROCESS", "DescribeAvailableCvmInstanceTypes")
check(len(call("DescribeCvmZoneInstanceConfigInfos", {})["InstanceTypeQuotaSet"]) > 0,
      "DescribeCvmZoneInstanceConfigInfos")
check(call("DescribeInstanceCategories", {})["InstanceCategorySet"][0]["InstanceFamilySet"] == ["PROCESS"],
      "DescribeInstanceCategories")
step("catalog actions")

# Clean-up, and a wrong key.
call("DeleteTaskTemplates", {"TaskTemplateIds": [template]})
call("DeleteComputeEnv", {"EnvId": env})
try:
    wrong = client(secret_key="not-the-right-key")
    wrong.DescribeJobs(models.DescribeJobsRequest())
    check(False, "a wrong SecretKey was accepted")
except TencentCloudSDKException as error:
    check(error.get_code() == "AuthFailure.SignatureFailure", "wrong SecretKey: %s" % error.get_code())
step("DeleteTaskTemplates, DeleteComputeEnv, wrong SecretKey refused")
print("all steps passed")
