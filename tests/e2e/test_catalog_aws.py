"""The AWS catalog, proven with boto3 through a running Airlock, against moto's server."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import boto3
import pytest
from botocore.config import Config

from tests.e2e.test_gate import eventually, runs
from tests.helpers.proxy import PROJECT_ROOT, Proxy

pytestmark = pytest.mark.e2e

AWS_HOSTS = (
    "*.us-east-1.amazonaws.com",  # ec2, dynamodb, lambda, rds, sts regional endpoints
    "*.amazonaws.com",  # iam, sts, s3 global endpoints
    "*.s3.amazonaws.com",  # virtual-hosted buckets
    "*.s3.us-east-1.amazonaws.com",
    "*.s3-fips.us-east-1.amazonaws.com",  # FIPS virtual-hosted buckets
)


@pytest.fixture(scope="module")
def proxy(start_proxy: Callable[..., Proxy], moto_port: int) -> Proxy:
    policies = PROJECT_ROOT / "tests" / "e2e" / "policies-allow-all"
    return start_proxy("--policies", str(policies), routes={host: moto_port for host in AWS_HOSTS})


def client(proxy: Proxy, service: str, **config: Any) -> Any:
    """A boto3 client set up as an agent's would be: HTTPS proxy plus the proxy's CA."""
    return boto3.client(
        service,
        region_name="us-east-1",
        aws_access_key_id="AKIAIOSFODNN7EXAMPLE",
        aws_secret_access_key="wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
        verify=str(proxy.ca_cert),
        config=Config(
            proxies={"https": proxy.url},
            retries={"max_attempts": 1, "mode": "standard"},
            **config,
        ),
    )


def recorded(proxy: Proxy, action: str, **params: Any) -> Any:
    """The newest run with this action whose params include the ones given."""

    def find() -> Any:
        for run in reversed(runs(proxy)):
            if run.action == action and all(run.params.get(k) == v for k, v in params.items()):
                return run
        return None

    run = eventually(find)
    assert run is not None, f"no {action} run with {params} was recorded"
    return run


def test_ec2_instances_and_ingress(proxy: Proxy) -> None:
    ec2 = client(proxy, "ec2")
    image = ec2.describe_images(Owners=["amazon"])["Images"][0]["ImageId"]
    reservation = ec2.run_instances(
        ImageId=image,
        MinCount=3,
        MaxCount=3,
        InstanceType="p4d.24xlarge",
        TagSpecifications=[{"ResourceType": "instance", "Tags": [{"Key": "team", "Value": "ml"}]}],
    )
    ids = [i["InstanceId"] for i in reservation["Instances"]]
    ec2.stop_instances(InstanceIds=ids[:1])
    ec2.terminate_instances(InstanceIds=ids)
    group = ec2.create_security_group(GroupName="web", Description="web")["GroupId"]
    ec2.authorize_security_group_ingress(
        GroupId=group,
        IpPermissions=[
            {
                "IpProtocol": "tcp",
                "FromPort": 22,
                "ToPort": 22,
                "IpRanges": [{"CidrIp": "0.0.0.0/0"}, {"CidrIp": "10.0.0.0/8"}],
                "Ipv6Ranges": [{"CidrIpv6": "::/0"}],
            }
        ],
    )

    run = recorded(proxy, "create_instances")
    assert run.params["instance_count"] == 3
    assert run.params["instance_type"] == "p4d.24xlarge"
    assert run.context == {"region": "us-east-1", "service": "ec2"}
    assert run.target == "ec2/us-east-1"
    assert (run.category, run.sensitivity, run.outcome, run.status) == (
        "compute",
        "high",
        "forwarded",
        200,
    )
    assert run.undo["action"] == "terminate_instances"
    terminated = recorded(proxy, "terminate_instances")
    assert terminated.params["instance_count"] == 3
    assert terminated.params["instance_ids"] == ids
    assert recorded(proxy, "stop_instances").params["instance_count"] == 1
    rule_id = ec2.describe_security_group_rules(Filters=[{"Name": "group-id", "Values": [group]}])[
        "SecurityGroupRules"
    ][0]["SecurityGroupRuleId"]
    ec2.modify_security_group_rules(
        GroupId=group,
        SecurityGroupRules=[
            {
                "SecurityGroupRuleId": rule_id,
                "SecurityGroupRule": {"IpProtocol": "tcp", "FromPort": 443, "ToPort": 443,
                                      "CidrIpv4": "0.0.0.0/0"},
            }
        ],
    )  # fmt: skip
    rewritten = recorded(proxy, "change_network_rules", group_id=group)
    assert (rewritten.params["world_open_ranges"], rewritten.params["cidrs"]) == (1, ["0.0.0.0/0"])
    ingress = recorded(proxy, "open_network_ingress", group_id=group)
    assert ingress.params["world_open_ranges"] == 2
    assert ingress.params["cidrs"] == ["0.0.0.0/0", "10.0.0.0/8"]
    assert ingress.params["from_port"] == 22
    assert recorded(proxy, "read", operation="DescribeImages").category == "read"
    assert "wJalrXUtnFEMI" not in str([r.request for r in runs(proxy)])


def test_s3_objects_buckets_and_permissions(proxy: Proxy) -> None:
    s3 = client(proxy, "s3")
    s3.create_bucket(Bucket="agent-data")
    s3.put_object(Bucket="agent-data", Key="reports/q1.csv", Body=b"a,b\n1,2\n")
    s3.put_object(Bucket="agent-data", Key="reports/q2.csv", Body=b"a,b\n")
    s3.delete_object(Bucket="agent-data", Key="reports/q1.csv")
    s3.delete_objects(
        Bucket="agent-data",
        Delete={"Objects": [{"Key": "reports/q2.csv"}, {"Key": "x"}, {"Key": "y"}]},
    )
    s3.put_bucket_policy(Bucket="agent-data", Policy='{"Version": "2012-10-17", "Statement": []}')
    s3.put_bucket_acl(Bucket="agent-data", ACL="public-read")
    s3.delete_public_access_block(Bucket="agent-data")
    s3.delete_bucket(Bucket="agent-data")
    path_style = client(proxy, "s3", s3={"addressing_style": "path"})
    path_style.create_bucket(Bucket="dotted.bucket.name")
    path_style.put_object(Bucket="dotted.bucket.name", Key="k", Body=b"x")

    put = recorded(proxy, "write_object", key="reports/q1.csv")
    assert (put.params["bucket"], put.params["size"]) == ("agent-data", 8)
    assert put.target == "s3://agent-data/reports/q1.csv"
    assert recorded(proxy, "delete_object", key="reports/q1.csv").target == (
        "s3://agent-data/reports/q1.csv"
    )
    bulk = recorded(proxy, "delete_objects")
    assert bulk.params["object_count"] == 3
    assert bulk.params["keys"] == ["reports/q2.csv", "x", "y"]
    assert recorded(proxy, "change_bucket_policy").target == "s3://agent-data"
    assert recorded(proxy, "change_bucket_acl").params["canned_acl"] == "public-read"
    assert recorded(proxy, "remove_public_access_block").sensitivity == "critical"
    assert recorded(proxy, "delete_bucket").target == "s3://agent-data"
    dotted = recorded(proxy, "write_object", key="k")
    assert dotted.target == "s3://dotted.bucket.name/k"


def test_iam_and_sts(proxy: Proxy) -> None:
    iam = client(proxy, "iam")
    iam.create_user(UserName="agent-made")
    iam.create_access_key(UserName="agent-made")
    iam.attach_user_policy(
        UserName="agent-made", PolicyArn="arn:aws:iam::aws:policy/AdministratorAccess"
    )
    inline = (
        '{"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*",'
        ' "Resource": "*"}]}'
    )
    iam.put_user_policy(UserName="agent-made", PolicyName="inline", PolicyDocument=inline)
    trust = '{"Version": "2012-10-17", "Statement": []}'
    iam.create_role(RoleName="worker", AssumeRolePolicyDocument=trust)
    iam.attach_role_policy(
        RoleName="worker", PolicyArn="arn:aws:iam::aws:policy/AmazonS3FullAccess"
    )
    iam.create_role(RoleName="temporary", AssumeRolePolicyDocument=trust)
    iam.delete_role(RoleName="temporary")
    iam.list_users()
    sts = client(proxy, "sts")
    sts.assume_role(RoleArn="arn:aws:iam::123456789012:role/worker", RoleSessionName="agent")

    assert recorded(proxy, "create_user", user_name="agent-made").target == "iam/user/agent-made"
    assert recorded(proxy, "create_access_key").sensitivity == "critical"
    admin = recorded(proxy, "attach_policy", principal="agent-made")
    assert admin.params["policy_name"] == "AdministratorAccess"
    assert admin.params["principal_type"] == "user"
    role = recorded(proxy, "attach_policy", principal="worker")
    assert (role.params["policy_name"], role.params["principal_type"]) == (
        "AmazonS3FullAccess",
        "role",
    )
    assert recorded(proxy, "put_inline_policy").params["policy_name"] == "inline"
    assert recorded(proxy, "delete_role").target == "iam/role/temporary"
    assert recorded(proxy, "read", operation="ListUsers").sensitivity == "low"
    assumed = recorded(proxy, "assume_role")
    assert assumed.target == "arn:aws:iam::123456789012:role/worker"


def test_dynamodb_lambda_and_rds(proxy: Proxy) -> None:
    dynamodb = client(proxy, "dynamodb")
    dynamodb.create_table(
        TableName="orders",
        KeySchema=[{"AttributeName": "id", "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": "id", "AttributeType": "S"}],
        BillingMode="PAY_PER_REQUEST",
    )
    dynamodb.batch_write_item(
        RequestItems={
            "orders": [
                {"PutRequest": {"Item": {"id": {"S": "1"}}}},
                {"PutRequest": {"Item": {"id": {"S": "2"}}}},
                {"DeleteRequest": {"Key": {"id": {"S": "3"}}}},
            ]
        }
    )
    dynamodb.get_item(TableName="orders", Key={"id": {"S": "1"}})
    dynamodb.delete_item(TableName="orders", Key={"id": {"S": "1"}})
    dynamodb.delete_table(TableName="orders")
    lambda_ = client(proxy, "lambda")
    with pytest.raises(lambda_.exceptions.ResourceNotFoundException):
        lambda_.invoke(FunctionName="report-builder", Payload=b'{"week": 12}')
    with pytest.raises(lambda_.exceptions.ResourceNotFoundException):
        lambda_.update_function_code(FunctionName="report-builder", ZipFile=b"PK\x03\x04")
    with pytest.raises(lambda_.exceptions.ResourceNotFoundException):
        lambda_.delete_function(FunctionName="report-builder")
    rds = client(proxy, "rds")
    rds.create_db_instance(
        DBInstanceIdentifier="prod-db",
        DBInstanceClass="db.t3.micro",
        Engine="postgres",
        MasterUsername="admin",
        MasterUserPassword="planted-db-password-1",
        AllocatedStorage=20,
    )
    rds.modify_db_instance(DBInstanceIdentifier="prod-db", DBInstanceClass="db.t3.small")
    rds.delete_db_instance(DBInstanceIdentifier="prod-db", SkipFinalSnapshot=True)
    rds.describe_db_instances()
    client(proxy, "sts").get_caller_identity()

    batch = recorded(proxy, "write_records")
    assert (batch.params["item_count"], batch.params["delete_count"]) == (3, 1)
    item = recorded(proxy, "delete_record", table="orders")
    assert item.params["resource"] == "dynamodb_item"
    assert item.params["key"] == {"id": {"S": "1"}}
    assert recorded(proxy, "delete_table", table="orders").sensitivity == "critical"
    assert recorded(proxy, "read", operation="GetItem").params["table"] == "orders"
    invoke = recorded(proxy, "invoke_function")
    assert (invoke.target, invoke.status) == ("lambda/report-builder", 404)
    assert recorded(proxy, "delete_function").target == "lambda/report-builder"
    assert recorded(proxy, "update_function_code").category == "code"
    assert recorded(proxy, "read", operation="DescribeDBInstances").target.startswith("rds")
    assert recorded(proxy, "read", operation="GetCallerIdentity").provider == "aws"
    configured = recorded(proxy, "configure_database")
    assert (configured.target, configured.decision) == ("rds/prod-db", "ALLOW")
    database = recorded(proxy, "delete_database")
    assert database.params["skip_final_snapshot"] is True
    assert database.target == "rds/prod-db"
    assert "planted-db-password-1" not in str([(r.request, r.params) for r in runs(proxy)])


def test_s3_configuration_writes_are_their_own_operations(proxy: Proxy) -> None:
    """Sub-resource writes were once read as the bucket itself (a lifecycle PUT as
    create_bucket, a policy DELETE as delete_bucket): each is now its own operation."""
    s3 = client(proxy, "s3")
    s3.create_bucket(Bucket="config-demo")
    s3.put_bucket_versioning(Bucket="config-demo", VersioningConfiguration={"Status": "Enabled"})
    s3.put_bucket_lifecycle_configuration(
        Bucket="config-demo",
        LifecycleConfiguration={
            "Rules": [{"ID": "all", "Status": "Enabled", "Filter": {}, "Expiration": {"Days": 1}}]
        },
    )
    s3.put_public_access_block(
        Bucket="config-demo",
        PublicAccessBlockConfiguration={
            "BlockPublicAcls": False,
            "IgnorePublicAcls": False,
            "BlockPublicPolicy": False,
            "RestrictPublicBuckets": True,
        },
    )
    s3.put_object(Bucket="config-demo", Key="open.txt", Body=b"x", ACL="public-read")
    s3.put_object_acl(Bucket="config-demo", Key="open.txt", ACL="public-read")
    s3.put_bucket_policy(
        Bucket="config-demo",
        Policy='{"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Principal": "*",'
        ' "Action": "s3:GetObject", "Resource": "arn:aws:s3:::config-demo/*"}]}',
    )
    s3.delete_bucket_policy(Bucket="config-demo")
    s3.put_bucket_tagging(Bucket="config-demo", Tagging={"TagSet": [{"Key": "t", "Value": "v"}]})
    role = "arn:aws:iam::123456789012:role/replication"
    s3.put_bucket_replication(
        Bucket="config-demo",
        ReplicationConfiguration={
            "Role": role,
            "Rules": [
                {
                    "ID": "r",
                    "Status": "Enabled",
                    "Priority": 1,
                    "Filter": {},
                    "DeleteMarkerReplication": {"Status": "Disabled"},
                    "Destination": {"Bucket": "arn:aws:s3:::backup"},
                }
            ],
        },
    )
    s3.delete_bucket_replication(Bucket="config-demo")
    s3.put_bucket_versioning(Bucket="config-demo", VersioningConfiguration={"Status": "Suspended"})
    fips = client(proxy, "s3", use_fips_endpoint=True)
    fips.put_object(Bucket="config-demo", Key="fips.txt", Body=b"y")

    versioning = recorded(proxy, "change_bucket_versioning", status="Suspended")
    assert versioning.operation == "aws.s3.PutBucketVersioning"
    assert versioning.params == {"bucket": "config-demo", "status": "Suspended", "mfa_delete": None}
    lifecycle = recorded(proxy, "change_bucket_lifecycle")
    assert lifecycle.operation == "aws.s3.PutBucketLifecycleConfiguration"
    assert (lifecycle.params["expiration_days"], lifecycle.params["expiring_rules"]) == (1, 1)
    assert recorded(proxy, "change_public_access_block").params["disabled_protections"] == 3
    public_put = recorded(proxy, "write_object", key="open.txt")
    assert public_put.params["canned_acl"] == "public-read"
    assert recorded(proxy, "change_object_acl").params["canned_acl"] == "public-read"
    assert (
        recorded(proxy, "change_bucket_policy", bucket="config-demo").params["public_statements"]
        == 1
    )
    deleted_policy = recorded(proxy, "delete_bucket_policy")
    assert (deleted_policy.operation, deleted_policy.mapping_id) == (
        "aws.s3.DeleteBucketPolicy",
        None,
    )
    assert deleted_policy.params["Bucket"] == "config-demo"
    assert recorded(proxy, "put_bucket_tagging").sensitivity == "medium"
    replication = recorded(proxy, "change_bucket_replication")
    assert replication.params["destinations"] == ["arn:aws:s3:::backup"]
    assert recorded(proxy, "remove_bucket_replication").operation == (
        "aws.s3.DeleteBucketReplication"
    )
    assert recorded(proxy, "write_object", key="fips.txt").host.startswith("config-demo.s3-fips")
    bucket_runs = [r for r in runs(proxy) if r.params.get("bucket") == "config-demo"]
    assert [r.operation for r in bucket_runs if r.action == "create_bucket"] == [
        "aws.s3.CreateBucket"
    ]


def test_object_lock_writes_are_recorded_with_their_bypass(proxy: Proxy) -> None:
    s3 = client(proxy, "s3")
    s3.create_bucket(Bucket="locked-demo", ObjectLockEnabledForBucket=True)
    s3.put_object(Bucket="locked-demo", Key="k", Body=b"x")
    s3.put_object_legal_hold(Bucket="locked-demo", Key="k", LegalHold={"Status": "ON"})
    lock = recorded(proxy, "change_object_lock")
    assert (lock.operation, lock.params["key"]) == ("aws.s3.PutObjectLegalHold", "k")
    assert lock.params["bypass_governance"] is False


def test_audit_trails_keys_secrets_and_sharing(proxy: Proxy) -> None:
    """The families that take away the means to see, recover or reach data."""
    from contextlib import suppress

    from botocore.exceptions import ClientError

    trust = '{"Version": "2012-10-17", "Statement": []}'
    anyone = (
        '{"Version": "2012-10-17", "Statement": [{"Effect": "Allow", '
        '"Principal": {"AWS": "*"}, "Action": "sts:AssumeRole"}]}'
    )
    iam = client(proxy, "iam")
    iam.create_role(RoleName="opened", AssumeRolePolicyDocument=trust)
    iam.update_assume_role_policy(RoleName="opened", PolicyDocument=anyone)
    iam.create_user(UserName="console-user")
    iam.create_login_profile(UserName="console-user", Password="planted-Passw0rd!")
    iam.delete_login_profile(UserName="console-user")
    iam.delete_user(UserName="console-user")
    kms = client(proxy, "kms")
    key = kms.create_key()["KeyMetadata"]["KeyId"]
    kms.schedule_key_deletion(KeyId=key, PendingWindowInDays=7)
    secrets = client(proxy, "secretsmanager")
    secrets.create_secret(Name="db-password", SecretString="planted-secret-value")
    secrets.delete_secret(SecretId="db-password", ForceDeleteWithoutRecovery=True)
    logs = client(proxy, "logs")
    logs.create_log_group(logGroupName="app")
    logs.delete_log_group(logGroupName="app")
    trail = client(proxy, "cloudtrail")
    with suppress(ClientError):  # moto wants the trail's bucket: what was sent is what counts
        trail.stop_logging(Name="main")
    ec2 = client(proxy, "ec2")
    volume = ec2.create_volume(AvailabilityZone="us-east-1a", Size=1)["VolumeId"]
    snapshot = ec2.create_snapshot(VolumeId=volume)["SnapshotId"]
    ec2.modify_snapshot_attribute(
        SnapshotId=snapshot,
        Attribute="createVolumePermission",
        OperationType="add",
        GroupNames=["all"],
    )

    opened = recorded(proxy, "change_trust_policy")
    assert (opened.operation, opened.params["open_to_anyone"]) == (
        "aws.iam.UpdateAssumeRolePolicy",
        1,
    )
    assert recorded(proxy, "create_login_profile").params["user_name"] == "console-user"
    assert "planted-Passw0rd!" not in str([r.request for r in runs(proxy)])
    assert recorded(proxy, "delete_user").target == "iam/user/console-user"
    deletion = recorded(proxy, "disable_key", key=key)
    assert (deletion.params["pending_days"], deletion.sensitivity) == (7, "critical")
    assert recorded(proxy, "delete_secret", resource="db-password").params["force_delete"] is True
    assert recorded(proxy, "delete_logs").params["log_group"] == "app"
    assert recorded(proxy, "stop_audit_logging").operation == "aws.cloudtrail.StopLogging"
    shared = recorded(proxy, "share_snapshot", resource=snapshot)
    assert shared.params["public_shares"] == 1
